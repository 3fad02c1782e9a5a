"""The capture's error and how an underlying exception is summarised in its messages."""

from __future__ import annotations

__all__ = ["TraceError", "one_line"]


class TraceError(RuntimeError):
    """The model cannot be captured: the message names the module (path and class), why, and the fix."""


def one_line(exc: BaseException) -> str:
    """``"TypeError: first line of the message"``, at most 300 characters, for embedding in a message."""
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    return f"{type(exc).__name__}: {message}"[:300]
