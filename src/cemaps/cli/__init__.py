"""The command line: a thin layer over the Python API (``cemaps --help``)."""

from cemaps.cli.analyze import analyze_command
from cemaps.cli.app import app, main
from cemaps.cli.capture import capture_command
from cemaps.cli.demo import demo_command
from cemaps.cli.inspect import inspect_command
from cemaps.cli.personalize import personalize_command
from cemaps.cli.report import report_command
from cemaps.cli.toyworld import toyworld_app

app.command("capture")(capture_command)
app.command("personalize")(personalize_command)
app.command("analyze")(analyze_command)
app.command("report")(report_command)
app.command("demo")(demo_command)
app.command("inspect")(inspect_command)
app.add_typer(toyworld_app, name="toyworld")

__all__ = ["app", "main"]
