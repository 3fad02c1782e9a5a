"""``strategy="split"`` for Lightning, without importing Lightning at ``import lightning_split``.

The package's top level must stay light (the planner and the profile format import neither
Lightning nor websockets), yet ``import lightning_split`` has always made
``L.Trainer(strategy="split")`` work. So: when Lightning is already loaded the strategy is
registered at once; otherwise a one-shot import hook registers it right after
``lightning.pytorch`` finishes loading, whichever import brings it in.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

_PACKAGE = "lightning.pytorch"


def register_split_strategy() -> None:
    """Import the strategy module, whose import registers ``"split"`` in Lightning's registry."""
    import lightning_split.runtime.strategy  # noqa: F401


class _RegisterAfterLoad(importlib.abc.MetaPathFinder):
    """Finds ``lightning.pytorch`` through the other finders and registers once it has executed."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != _PACKAGE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            register_split_strategy()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now if Lightning is loaded, else when it loads (idempotent)."""
    if _PACKAGE in sys.modules:
        register_split_strategy()
    elif not any(isinstance(finder, _RegisterAfterLoad) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterLoad())
