"""``strategy="split"`` for Lightning, without importing Lightning (or lightning_split) early.

``import lightning_split`` has always made ``L.Trainer(strategy="split")`` work, yet the
package's top level must stay light (the planner and the profile format import neither
Lightning nor websockets). And LightningCLI builds its ``Trainer`` from
``--trainer.strategy=split`` before any user code imports lightning_split. So: when Lightning
is already loaded the strategy is registered at once; otherwise a one-shot import hook
registers it right after ``lightning.pytorch`` finishes loading, whichever import brings it in.

This module is top-level and stdlib-only because the installed ``lightning_split.pth`` runs
:func:`install` at interpreter start-up (``LIGHTNING_SPLIT_NO_STARTUP=1`` turns that off):
it must not import the package there, so that the package is found on ``sys.path`` as it
stands when Lightning loads (a source checkout before an installed copy).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

__all__ = ["RegisterAfterLoad", "install", "register_split_strategy"]

_PACKAGE = "lightning.pytorch"


def register_split_strategy() -> None:
    """Import the strategy module, whose import registers ``"split"`` in Lightning's registry."""
    import lightning_split.runtime.strategy  # noqa: F401


class RegisterAfterLoad(importlib.abc.MetaPathFinder):
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
    elif not any(isinstance(finder, RegisterAfterLoad) for finder in sys.meta_path):
        sys.meta_path.insert(0, RegisterAfterLoad())
