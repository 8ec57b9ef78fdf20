"""The project's exception types.

Every error a user can cause (a missing file, a malformed config, a store made
with other settings) is a :class:`CemapsError` whose message is one line that
names the input and says what was expected. The CLI prints it and exits 2.
"""

from __future__ import annotations


class CemapsError(Exception):
    """Base class: a one-line, user-facing error."""


class ConfigError(CemapsError):
    """A study config, prompt list or CLI option is malformed."""


class ModelLoadError(CemapsError):
    """Weights are missing, unsafe, or made for another architecture."""


class LayerNotFoundError(CemapsError, LookupError):
    """A layer name or glob matches no module of the model."""


class StoreError(CemapsError):
    """A store is unreadable, foreign, or was made with other settings."""
