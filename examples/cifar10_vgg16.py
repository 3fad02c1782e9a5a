"""Split training of VGG-16 (with batch norm) on CIFAR-10 with lightning-split.

    python examples/cifar10_vgg16.py                             # embedded server, cut planned
    lightning-split serve --model examples.cifar10_vgg16:CifarVGG16 --port 8765   # other terminal
    python examples/cifar10_vgg16.py --server ws://127.0.0.1:8765 --cut features.23

torchvision's vgg16_bn (batch norm, so it trains from scratch at a plain SGD learning rate)
adapted to 32x32 inputs: after the five poolings the features are 512x1x1, so the 7x7
average pool goes and the classifier is 512 -> 512 -> 10 instead of 25088 -> 4096 -> 4096.
"""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import nn

try:
    from examples._cifar import CifarClassifier, RunResult, parse_args, run
except ModuleNotFoundError:  # started as `python examples/cifar10_vgg16.py`: examples/ is the import root
    from _cifar import CifarClassifier, RunResult, parse_args, run


class CifarVGG16(CifarClassifier):
    """VGG-16 with batch norm (torchvision features) and a CIFAR-sized classifier."""

    def __init__(self, lr: float = 0.05, weight_decay: float = 5e-4, dropout: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torchvision.models.vgg16_bn(num_classes=10)
        self.net.avgpool = nn.Identity()
        self.net.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(512, 10)
        )


def main(argv: Sequence[str] | None = None) -> RunResult:
    """Parse ``argv`` (default: the command line) and train."""
    return run(CifarVGG16, parse_args(argv, __doc__.splitlines()[0], default_lr=0.05))


if __name__ == "__main__":
    main()
