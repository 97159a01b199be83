"""The one error type the rig raises for anything a user can fix.

Tasks catch :class:`RigError`, print ``message`` and ``hint`` and exit non-zero;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class RigError(Exception):
    """A failure with a plain explanation and, where known, how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class Refused(RigError):
    """Something the rig will not do safely; ``reason`` is a stable code callers and tests match on."""

    def __init__(self, reason: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.reason = reason
