"""Split training of ResNet-18 on CIFAR-10 with lightning-split.

    python examples/cifar10_resnet18.py                          # embedded server, cut planned
    python examples/cifar10_resnet18.py --cut layer2 --link 20mbit,10ms
    lightning-split serve --model examples.cifar10_resnet18:CifarResNet18 --port 8765   # other terminal
    python examples/cifar10_resnet18.py --server ws://127.0.0.1:8765

torchvision's resnet18 adapted to 32x32 inputs the usual way: a 3x3 stride-1 first
convolution and no max-pool, so layer1 sees 32x32 feature maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import nn

try:
    from examples._cifar import CifarClassifier, RunResult, parse_args, run
except ModuleNotFoundError:  # started as `python examples/cifar10_resnet18.py`: examples/ is the import root
    from _cifar import CifarClassifier, RunResult, parse_args, run


class CifarResNet18(CifarClassifier):
    """ResNet-18 (torchvision) for 10 classes with a CIFAR stem."""

    def __init__(self, lr: float = 0.05, weight_decay: float = 5e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torchvision.models.resnet18(num_classes=10)
        self.net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()


def main(argv: Sequence[str] | None = None) -> RunResult:
    """Parse ``argv`` (default: the command line) and train."""
    return run(CifarResNet18, parse_args(argv, __doc__.splitlines()[0], default_lr=0.05))


if __name__ == "__main__":
    main()
