"""Split training of a CIFAR-10 ResNet-18 with lightning-split.

    python examples/cifar10_split.py                       # embedded server, cut planned automatically
    python examples/cifar10_split.py --server ws://HOST:8765 --cut layer2

Real CIFAR-10 is read from --data-dir (torchvision's `cifar-10-batches-py` layout) when it is
there; nothing is downloaded. Without it the script says so and trains on synthetic data of
the same shape, which is enough to see the plan, the traffic and the equivalence at work.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch.utils.data import DataLoader, TensorDataset

from lightning_split import SplitStrategy


class CifarResNet(L.LightningModule):
    """torchvision's ResNet-18 for 10 classes, with accuracy from torchmetrics."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        import torchvision

        self.save_hyperparameters()
        self.net = torchvision.models.resnet18(num_classes=10)
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log_dict({"train_loss": loss, "train_acc": self.train_acc}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def cifar10(data_dir: Path, train: bool, limit: int) -> TensorDataset:
    """CIFAR-10 from a local copy, else synthetic data of the same shape (said plainly)."""
    if (data_dir / "cifar-10-batches-py").is_dir():
        import torchvision

        data = torchvision.datasets.CIFAR10(str(data_dir), train=train, download=False)
        images = torch.tensor(data.data[:limit]).permute(0, 3, 1, 2).float() / 255.0
        images = (images - 0.5) / 0.25
        print(f"data: CIFAR-10 from {data_dir} ({len(images)} images)")
        return TensorDataset(images, torch.tensor(data.targets[:limit]))
    print(f"data: no CIFAR-10 under {data_dir} (cifar-10-batches-py); using {limit} synthetic 3x32x32 images")
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(limit, 3, 32, 32, generator=generator), torch.randint(0, 10, (limit,), generator=generator)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=None, help="ws://host:port of `lightning-split serve` (default: embedded)")
    parser.add_argument("--cut", default="auto", help="'auto' or a module path such as layer2")
    parser.add_argument("--link", default=None, help="link to plan for, e.g. '20mbit,10ms'")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=640, help="images used (keeps the demo short on a CPU)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    torch.manual_seed(0)
    loader = DataLoader(cifar10(args.data_dir, True, args.limit), batch_size=args.batch_size, shuffle=True)
    strategy = SplitStrategy(server=args.server, cut=args.cut, link=args.link)
    trainer = L.Trainer(
        strategy=strategy, accelerator="cpu", max_epochs=args.epochs, log_every_n_steps=5, enable_model_summary=False
    )
    trainer.fit(CifarResNet(), loader)
    traffic = strategy.last_traffic
    if traffic:
        print(
            f"per step: {traffic['split/bytes_up'] / 2**20:.2f} MiB up, {traffic['split/bytes_down'] / 2**20:.2f} MiB "
            f"down, {traffic['split/remote_s'] * 1e3:.1f} ms remote ({traffic['split/server_compute_s'] * 1e3:.1f} ms "
            "server compute)"
        )


if __name__ == "__main__":
    main()
