"""Run at interpreter start-up by ``lightning_split.pth``: ``strategy="split"`` without an import.

LightningCLI builds the ``Trainer`` from ``--trainer.strategy=split`` (or
``=lightning_split.SplitStrategy``) before any code of the user imports lightning_split, and
Lightning looks strategy names up in its registry then. The installed ``.pth`` file imports
this module at start-up, which only installs :mod:`lightning_split._registry`'s one-shot hook
(no torch, no Lightning: a few milliseconds); the strategy registers when Lightning loads.
``LIGHTNING_SPLIT_NO_STARTUP=1`` turns it off (the ``.pth`` line checks it before importing).
"""

from __future__ import annotations

try:
    from lightning_split import _registry

    _registry.install()
except Exception:  # start-up must never break the interpreter
    pass
