"""Errors td3core raises for bad input: precise, never a bare traceback."""

from __future__ import annotations


class TD3Error(Exception):
    """Base class: the message is meant for the user as it is."""


class DataError(TD3Error):
    """Malformed or unusable input data, located as precisely as we can."""

    def __init__(self, problem: str, *, file: str | None = None, line: int | None = None):
        self.problem = problem
        self.file = file
        self.line = line
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        super().__init__(f"{where}{problem}")


class ConfigError(TD3Error):
    """A setting that cannot work (e.g. a window longer than the inner loop)."""


class Cancelled(TD3Error):
    """Raised inside long work when the caller asked it to stop."""
