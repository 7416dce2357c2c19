"""Exceptions whose message is one line that names the file and the cause."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class BrainAgeError(Exception):
    """Base class of every error brainage reports to a user without a traceback."""


class InputError(BrainAgeError):
    """A file (scan, spreadsheet, table) that cannot be used, and why."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickle by path and cause, so errors raised in worker processes reach the parent intact."""
        return (type(self), (self.path, self.cause))


@dataclass(frozen=True)
class Problem:
    """A bad item met by a batch job that went on past it."""

    path: str
    cause: str

    @classmethod
    def from_error(cls, error: InputError) -> Problem:
        return cls(error.path, error.cause)
