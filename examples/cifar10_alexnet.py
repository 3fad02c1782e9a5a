"""Split training of a small AlexNet-style network on CIFAR-10 with lightning-split.

    python examples/cifar10_alexnet.py                           # embedded server, cut planned
    lightning-split serve --model examples.cifar10_alexnet:CifarAlexNet --port 8765   # other terminal
    python examples/cifar10_alexnet.py --server ws://127.0.0.1:8765 --cut features.5

AlexNet's shape (five convolutions with ReLU and three max-pools, then three fully
connected layers) scaled to 32x32 inputs, the kind of CIFAR AlexNet that split-learning
papers train: 3x3 kernels, 64-192-384-256-256 channels, a 4096 -> 1024 -> 1024 -> 10 classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

try:
    from examples._cifar import CifarClassifier, RunResult, parse_args, run
except ModuleNotFoundError:  # started as `python examples/cifar10_alexnet.py`: examples/ is the import root
    from _cifar import CifarClassifier, RunResult, parse_args, run


class AlexNetCifar(nn.Module):
    """The network: ``features`` (conv/ReLU/pool, 32x32 -> 256x4x4) and ``classifier``."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(64, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 4x4
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 4 * 4, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class CifarAlexNet(CifarClassifier):
    """The AlexNet-style network as a CIFAR-10 LightningModule."""

    def __init__(self, lr: float = 0.01, weight_decay: float = 5e-4, dropout: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = AlexNetCifar(10, dropout)


def main(argv: Sequence[str] | None = None) -> RunResult:
    """Parse ``argv`` (default: the command line) and train."""
    return run(CifarAlexNet, parse_args(argv, __doc__.splitlines()[0], default_lr=0.01))


if __name__ == "__main__":
    main()
