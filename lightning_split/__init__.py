"""lightning-split: split learning for PyTorch Lightning.

The device runs the first part of the network, an edge server the rest; the cut is the
minimum s-t cut of the model's cost graph. See README.md for the cost model and the CLI.
"""

from lightning_split.profile import Link, NodeCost, Profile, ProfileError

__version__ = "0.1.0"

__all__ = ["Link", "NodeCost", "Profile", "ProfileError", "__version__"]
