"""lightning-split: split learning for PyTorch Lightning.

The device runs the first part of the network, an edge server the rest; the cut is the
minimum s-t cut of the model's cost graph. ``import lightning_split`` registers the
``"split"`` strategy, so ``L.Trainer(strategy="split")`` works. See README.md.

The layers, bottom up (each imports only those below it):

- :mod:`lightning_split.planning`: profiles, the cost model and the min-cut planner (plain data);
- :mod:`lightning_split.graph`: a module captured as a cost graph, cut into two programs;
- :mod:`lightning_split.transport`: the no-pickle wire format, the sans-I/O protocol, the client;
- :mod:`lightning_split.costs`: node costs estimated or measured, the link measured, a cache;
- :mod:`lightning_split.serve`: the server (sessions, model hosting, state on disk);
- :mod:`lightning_split.runtime`: the device's runtime and the Lightning strategy;
- presentation: :mod:`lightning_split.report`, :mod:`lightning_split.plot`, :mod:`lightning_split.cli`.

The names below are re-exported lazily: ``import lightning_split.planning.planner`` loads
neither Lightning nor websockets.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_split import _registry

__version__ = "0.1.0"

_EXPORTS = {
    "Link": "lightning_split.planning.profile",
    "NodeCost": "lightning_split.planning.profile",
    "Profile": "lightning_split.planning.profile",
    "ProfileError": "lightning_split.planning.profile",
    "Plan": "lightning_split.planning.planner",
    "PlanningError": "lightning_split.planning.planner",
    "plan": "lightning_split.planning.planner",
    "SplitStrategy": "lightning_split.runtime.strategy",
    "Codec": "lightning_split.transport.codecs",
    "register_codec": "lightning_split.transport.codecs",
    "Federation": "lightning_split.runtime.federation",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_split' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


_registry.install()
