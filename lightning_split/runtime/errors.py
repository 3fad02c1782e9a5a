"""The runtime's own error, one module below the modules that raise it."""

from __future__ import annotations

__all__ = ["SplitConfigError"]


class SplitConfigError(ValueError):
    """The model or its training setup cannot be split as asked; the message says how to fix it."""
