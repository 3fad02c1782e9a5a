"""What the CIFAR-10 examples share: data, options, a classifier base and the split Trainer run.

Each ``examples/cifar10_<model>.py`` defines one LightningModule (a subclass of
:class:`CifarClassifier` that builds ``self.net``) and calls :func:`run`. The model classes
live in importable modules so that ``lightning-split serve --model examples.cifar10_vgg16:CifarVGG16``
can build the same model on the server from the hyperparameters the device sends.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_split import SplitStrategy

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10


class CifarClassifier(L.LightningModule):
    """A CIFAR-10 classifier around ``self.net`` (set by the subclass): cross-entropy, accuracy, SGD.

    Subclasses call ``self.save_hyperparameters()`` in their own ``__init__`` so that the
    server can rebuild them from the same (JSON) constructor arguments.
    """

    net: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=NUM_CLASSES)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)}


# -- data ------------------------------------------------------------------------------------


def cifar10(data_dir: Path, train: bool, synthetic_size: int) -> Dataset:
    """CIFAR-10 from a local copy (torchvision's layout, never downloaded), else synthetic data.

    The synthetic stand-in has CIFAR-10's shapes and ten classes, each a fixed random
    template plus noise, so accuracy rises above chance when training works. It is said
    plainly on stdout which one is used.
    """
    split = "train" if train else "test"
    if (data_dir / "cifar-10-batches-py").is_dir():
        import torchvision
        from torchvision import transforms as T

        steps: list[Any] = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
        transform = T.Compose([*steps, T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
        data = torchvision.datasets.CIFAR10(str(data_dir), train=train, transform=transform, download=False)
        print(f"data: CIFAR-10 {split} set from {data_dir} ({len(data)} images)")
        return data
    size = synthetic_size if train else max(1, synthetic_size // 4)
    print(
        f"data: no CIFAR-10 under {data_dir} (expected {data_dir / 'cifar-10-batches-py'}); "
        f"using {size} synthetic 3x32x32 {split} images (class templates plus noise)"
    )
    return synthetic_cifar10(size, seed=0 if train else 1)


def synthetic_cifar10(size: int, seed: int) -> TensorDataset:
    """``size`` images of shape 3x32x32: one fixed template per class plus Gaussian noise."""
    templates = torch.randn(NUM_CLASSES, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    images = templates[labels] + 1.5 * torch.randn(size, 3, 32, 32, generator=generator)
    return TensorDataset(images, labels)


# -- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None, description: str, default_lr: float) -> argparse.Namespace:
    """The options every CIFAR-10 example takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--server", default=None, help="ws://HOST:PORT of `lightning-split serve` (default: embedded)")
    parser.add_argument("--token", default=None, help="bearer token (default: $LIGHTNING_SPLIT_TOKEN)")
    parser.add_argument("--cut", default="auto", help="'auto' (planned) or a node name / module path, e.g. layer2")
    parser.add_argument("--link", default=None, help="emulated link limit (SplitStrategy(link=...)), e.g. 10mbit,20ms")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="folder holding cifar-10-batches-py")
    parser.add_argument("--synthetic-size", type=int, default=2048, help="training images when CIFAR-10 is absent")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit-batches", type=int, default=None, help="train and validate on N batches per epoch")
    parser.add_argument("--lr", type=float, default=default_lr)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--root-dir", type=Path, default=None, help="Lightning's default_root_dir (logs, checkpoints)")
    return parser.parse_args(argv)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What one example run measured: final metrics, the strategy (plan, traffic) and wall time."""

    metrics: dict[str, float]
    strategy: SplitStrategy
    seconds: float
    traffic: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """The final line the examples print."""
        acc = " ".join(f"{k}={self.metrics[k]:.4f}" for k in ("train_acc", "val_acc") if k in self.metrics)
        return f"final: {acc or 'no accuracy logged'} | {traffic_text(self.traffic)} | {self.seconds:.1f} s"


def format_mib(size: float) -> str:
    """Bytes as MiB with two decimals."""
    return f"{size / 2**20:.2f} MiB"


def traffic_text(traffic: dict[str, float]) -> str:
    """The last training step's split traffic (``SplitStrategy.last_traffic``) as one readable phrase."""
    if not traffic:
        return "no split traffic (everything ran on the device)"
    return (
        f"split traffic of the last step: {format_mib(traffic['split/bytes_up'])} up, "
        f"{format_mib(traffic['split/bytes_down'])} down, {traffic['split/remote_s'] * 1e3:.1f} ms remote "
        f"({traffic['split/server_compute_s'] * 1e3:.1f} ms server compute)"
    )


def model_spec(cls: type) -> str:
    """``examples.<script>:<Class>``: how ``lightning-split serve --model`` imports ``cls`` from the repo root.

    A script started as ``python examples/x.py`` defines its class in ``__main__``, which the
    server cannot import, so the path is named from the file instead of ``cls.__module__``.
    """
    return f"examples.{Path(inspect.getfile(cls)).stem}:{cls.__qualname__}"


def show_plan_logs() -> None:
    """Make the strategy's INFO log (the plan, printed at the first step) visible on stderr."""
    logger = logging.getLogger("lightning_split")
    logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def run(
    model_cls: type[CifarClassifier],
    args: argparse.Namespace,
    strategy_options: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> RunResult:
    """Train ``model_cls`` split between this process and a server, print the plan and a final line.

    ``strategy_options`` are further :class:`SplitStrategy` arguments (``costs``, ``plan_link``, ...).
    """
    show_plan_logs()
    L.seed_everything(args.seed, verbose=False)
    loaders = [
        DataLoader(
            cifar10(args.data_dir, train, args.synthetic_size),
            batch_size=args.batch_size,
            shuffle=train,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
        )
        for train in (True, False)
    ]
    model = model_cls(lr=args.lr, weight_decay=args.weight_decay, **model_kwargs)
    # The embedded server hosts this very class; a remote one imports it by name.
    remote_name = model_spec(model_cls) if args.server else None
    strategy = SplitStrategy(
        server=args.server,
        cut=args.cut,
        link=args.link,
        token=args.token,
        model=remote_name,
        **(strategy_options or {}),
    )
    limit = args.limit_batches if args.limit_batches is not None else 1.0
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="cpu",
        max_epochs=args.epochs,
        limit_train_batches=limit,
        limit_val_batches=limit,
        log_every_n_steps=1,  # so last_traffic is the last step alone (the first also opens the session)
        default_root_dir=args.root_dir,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, *loaders)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if math.isfinite(float(v))}
    result = RunResult(metrics, strategy, time.perf_counter() - start, dict(strategy.last_traffic))
    print(result.summary())
    return result
