"""Split training of MobileNetV2 on CIFAR-10 with lightning-split.

    python examples/cifar10_mobilenetv2.py                       # embedded server, cut planned
    lightning-split serve --model examples.cifar10_mobilenetv2:CifarMobileNetV2 --port 8765   # other terminal
    python examples/cifar10_mobilenetv2.py --server ws://127.0.0.1:8765

torchvision's mobilenet_v2 adapted to 32x32 inputs as the common CIFAR versions do: the
first convolution and the first block of the 24-channel stage use stride 1 instead of 2,
so the last feature map is 4x4 rather than 1x1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torchvision

try:
    from examples._cifar import CifarClassifier, RunResult, parse_args, run
except ModuleNotFoundError:  # started as `python examples/cifar10_mobilenetv2.py`: examples/ is the import root
    from _cifar import CifarClassifier, RunResult, parse_args, run


class CifarMobileNetV2(CifarClassifier):
    """MobileNetV2 (torchvision) for 10 classes with CIFAR strides."""

    def __init__(self, lr: float = 0.05, weight_decay: float = 4e-5, width_mult: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torchvision.models.mobilenet_v2(num_classes=10, width_mult=width_mult)
        self.net.features[0][0].stride = (1, 1)
        self.net.features[2].conv[1][0].stride = (1, 1)


def main(argv: Sequence[str] | None = None) -> RunResult:
    """Parse ``argv`` (default: the command line) and train."""
    return run(CifarMobileNetV2, parse_args(argv, __doc__.splitlines()[0], default_lr=0.05))


if __name__ == "__main__":
    main()
