"""A small PyTorch Lightning project: a CNN that classifies scikit-learn's 8x8 handwritten digits.

``train_local.py`` trains it on this machine. ``train_split.py`` is the same file with
lightning-split added: ``one_line.diff`` shows the change. It names the cut (after the first
pooling: two convolutions on the device, the rest on an embedded server) so that the split
shows on one machine, where ``SplitStrategy()`` alone may rightly plan to keep everything on
the device. Both run offline (the digits ship with scikit-learn) and, with the same seed,
end with the same weights.

    python examples/convert/train_local.py
    python examples/convert/train_split.py
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning_split import SplitStrategy
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DigitsClassifier(L.LightningModule):
    """Three convolutions and two linear layers on 1x8x8 digit images."""

    def __init__(self, width: int = 64, lr: float = 0.002) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * 16, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(dim=1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def digits_loaders(batch_size: int) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders: 1,437 and 360 digits in a fixed shuffled order."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, val = order[:1437], order[1437:]
    return (
        DataLoader(TensorDataset(images[train], labels[train]), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(images[val], labels[val]), batch_size=batch_size),
    )


def main(argv: Sequence[str] | None = None) -> tuple[DigitsClassifier, float]:
    """Train, print the validation accuracy, and return the model and that accuracy."""
    parser = argparse.ArgumentParser(description="Train the digits CNN.")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    L.seed_everything(0)
    model = DigitsClassifier()
    train_loader, val_loader = digits_loaders(args.batch_size)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", strategy=SplitStrategy(cut="net.4"))
    trainer.fit(model, train_loader, val_loader)
    accuracy = float(trainer.callback_metrics["val_acc"])
    print(f"validation accuracy: {accuracy:.4f}")
    return model, accuracy


if __name__ == "__main__":
    main()
