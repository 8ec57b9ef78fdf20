"""The package version, in a module of its own so that modules of the package read it without importing the
public facade (:mod:`cemaps`), which declares every name of the package."""

__version__ = "0.1.0"
