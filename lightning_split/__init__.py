"""lightning-split: split learning for PyTorch Lightning.

The device runs the first part of the network, an edge server the rest; the cut is the
minimum s-t cut of the model's cost graph. ``import lightning_split`` registers the
``"split"`` strategy, so ``L.Trainer(strategy="split")`` works. See README.md.
"""

from lightning_split.planner import Plan, PlanningError, plan
from lightning_split.profile import Link, NodeCost, Profile, ProfileError
from lightning_split.strategy import SplitStrategy

__version__ = "0.1.0"

__all__ = [
    "Link",
    "NodeCost",
    "Plan",
    "PlanningError",
    "Profile",
    "ProfileError",
    "SplitStrategy",
    "__version__",
    "plan",
]
