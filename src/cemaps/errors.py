"""The project's exception types.

Every error a user can cause (a missing file, a malformed config, a store made
with other settings) is a :class:`CemapsError` whose message is one line that
names the input and says what was expected. The CLI prints it and exits 2.
"""

from __future__ import annotations


def one_line(text: object) -> str:
    """A library's multi-line message joined into one line (never cut after its first line)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " ".join(lines) if lines else type(text).__name__


class CemapsError(Exception):
    """Base class: a one-line, user-facing error."""


class ConfigError(CemapsError):
    """A study config, prompt list or CLI option is malformed."""


class SettingError(ConfigError):
    """One setting of a Python settings object has a bad value.

    The message names the Python field (``TrainSettings.rank=0``); a front end that
    exposes the setting under another name (the CLI's ``--rank``) re-words it with
    :meth:`renamed`, so that every message names an option the user can actually set.
    """

    def __init__(self, owner: str, field: str, value: object, expected: str) -> None:
        self.owner, self.field, self.value, self.expected = owner, field, value, expected
        super().__init__(f"{owner}.{field}={value!r} is invalid; expected {expected}")

    def renamed(self, option: str) -> ConfigError:
        """The same error naming ``option`` (e.g. ``"--rank"``) instead of the Python field."""
        return ConfigError(f"{option} {self.value!r} is invalid; expected {self.expected}")


class OutputError(CemapsError):
    """An output path cannot be written: a file where a folder is needed, a folder holding files
    that cemaps did not write, or a folder the operating system refuses to write to."""


class ModelLoadError(CemapsError):
    """Weights are missing, unsafe, or made for another architecture."""


class LayerNotFoundError(CemapsError, LookupError):
    """A layer name or glob matches no module of the model."""


class StoreError(CemapsError):
    """A store is unreadable, foreign, or was made with other settings."""
