"""One exception tree for the appliance.

Messages say what was expected, what was found and where (file, level, tile, tag), because
they end up in front of a lab technician or in a quarantine reason.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Root of every error the appliance raises on purpose."""


class InputError(EdgeError):
    """The input slide cannot be converted; retrying will not help."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsupportedInput(InputError):
    """A readable file in a format, compression or layout the appliance does not handle."""


class CorruptInput(InputError):
    """A file that claims a supported format but whose bytes are damaged or inconsistent."""


class OutputError(EdgeError):
    """Writing the result failed (disk full, permissions); the input may be fine."""
