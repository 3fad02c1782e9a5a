"""Models and data shared by the tests (and importable by a `lightning-split serve` process)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def digits(n: int | None = None) -> TensorDataset:
    """scikit-learn's 8x8 handwritten digits (shipped offline) as (N, 1, 8, 8) floats and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    if n is not None:
        images, labels = images[:n], labels[:n]
    return TensorDataset(images, labels)


def loader(n: int = 640, batch_size: int = 32) -> DataLoader:
    return DataLoader(digits(n), batch_size=batch_size, shuffle=False)


class DagNet(L.LightningModule):
    """A small DAG: a residual join and a concatenation, so a cut can cross several tensors.

    ``cut="b"`` puts stem, a, the residual add and b on the device: the residual sum ``r``
    (consumed by the concat and the final add) and ``b`` cross to the server.
    """

    def __init__(
        self,
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        scheduler: bool = False,
        dropout: float = 0.0,
        manual: bool = False,
        manual_clip: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = not manual
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.mix = nn.Conv2d(16, 8, 1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        a = torch.relu(self.a(s))
        r = a + s
        b = self.b(r)
        c = torch.cat([r, b], dim=1)
        m = self.mix(c)
        return self.head(self.drop(torch.flatten(m + r, 1)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.hparams.manual_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.manual_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        return logits

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        if self.hparams.optimizer == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TiedNet(L.LightningModule):
    """Two layers share one weight; a placement must keep both uses on one side."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.inp = nn.Linear(64, 16)
        self.l1 = nn.Linear(16, 16)
        self.l2 = nn.Linear(16, 16)
        self.l2.weight = self.l1.weight
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(torch.flatten(x, 1)))
        h = torch.relu(self.l1(h))
        return self.head(torch.relu(self.l2(h)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class TwoOptimizerNet(DagNet):
    """Manual optimization with two optimizers: SGD on the stem, Adam on everything else."""

    def __init__(self, **kwargs) -> None:
        super().__init__(manual=True, **kwargs)

    def training_step(self, batch, batch_idx):
        x, y = batch
        first, second = self.optimizers()
        for optimizer in (first, second):
            loss = F.cross_entropy(self(x), y)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return loss

    def configure_optimizers(self):
        stem = list(self.stem.parameters())
        rest = [p for name, p in self.named_parameters() if not name.startswith("stem.")]
        return torch.optim.SGD(stem, lr=0.05, momentum=0.9), torch.optim.Adam(rest, lr=0.01)


class PerSampleNet(DagNet):
    """DagNet with per-sample normalisation (GroupNorm in the stem, LayerNorm before the head).

    The same DAG (a residual join and a concatenation; ``cut="b"`` sends ``r`` and ``b``), but
    every layer treats the samples of a batch independently, so training it on micro-batches
    equals training it on whole batches.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.norm = nn.LayerNorm(8 * 8 * 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        a = torch.relu(self.a(s))
        r = a + s
        b = self.b(r)
        c = torch.cat([r, b], dim=1)
        m = self.mix(c)
        return self.head(self.drop(self.norm(torch.flatten(m + r, 1))))


class DigitsMLP(L.LightningModule):
    """An MLP on the flattened digits: ``l1`` (64 -> ``hidden``), ReLU, ``head`` (``hidden`` -> 10).

    ``cut="l1"`` splits it after its first layer: the (batch, hidden) activations cross, and the
    flatten before ``l1`` is a raw node (private inputs keep it on the device). A device choosing
    ``hidden`` chooses the server's model size (the server's memory bound is tested with it).
    """

    def __init__(self, hidden: int = 256, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.l1 = nn.Linear(64, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.l1(torch.flatten(x, 1))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class WritesCutInPlace(DigitsMLP):
    """DigitsMLP whose hidden value is read by ``mul`` and then written in place by ``add_``.

    ``cut="add_"`` keeps ``l1`` and ``add_`` on the device and runs ``mul`` on the server, so
    the server must get the hidden value as it was before ``add_`` wrote it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(torch.flatten(x, 1))
        doubled = h * 2
        h.add_(1)
        return self.head(torch.relu(doubled)) + self.head(h)
