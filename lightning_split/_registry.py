"""``strategy="split"`` for Lightning: the registration hook of :mod:`lightning_split_startup`.

The hook lives in a top-level, stdlib-only module so that the installed start-up file
(``lightning_split.pth``) can install it without importing this package; ``import
lightning_split`` installs the same hook (idempotent), for an environment without the file.
"""

from __future__ import annotations

from lightning_split_startup import install, register_split_strategy

__all__ = ["install", "register_split_strategy"]
