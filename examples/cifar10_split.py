"""The README's demo: split training of a CIFAR-10 ResNet-18 on the embedded server.

    python examples/cifar10_split.py                        # embedded server, cut planned, 20 batches
    python examples/cifar10_split.py --server ws://HOST:8765 --cut layer2 --limit-batches 100

It is ``examples/cifar10_resnet18.py`` with one default changed: ``--limit-batches 20``
(train and validate on 20 batches), so the demo takes about a minute on a laptop CPU.
Every option of that script works here and overrides the default (``--help`` lists them).
Real CIFAR-10 is read from ``--data-dir`` when it is there; nothing is downloaded.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

try:
    from examples._cifar import RunResult
    from examples.cifar10_resnet18 import main as resnet18_main
except ModuleNotFoundError:  # started as `python examples/cifar10_split.py`: examples/ is the import root
    from _cifar import RunResult
    from cifar10_resnet18 import main as resnet18_main

DEMO_DEFAULTS = ("--limit-batches", "20")


def main(argv: Sequence[str] | None = None) -> RunResult:
    """Run the ResNet-18 example with the demo's defaults; options in ``argv`` come later and win."""
    return resnet18_main([*DEMO_DEFAULTS, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
