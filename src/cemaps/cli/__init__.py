"""The command line: a thin layer over the Python API (``cemaps --help``)."""

from cemaps.cli.app import app, main
from cemaps.cli.capture import capture_command
from cemaps.cli.inspect import inspect_command

app.command("capture")(capture_command)
app.command("inspect")(inspect_command)

__all__ = ["app", "main"]
