"""The measured part of ``benchmarks/traces.py``: a short split training run whose emulated link follows a trace.

A small CNN on sklearn's digits (8x8 images, batch 32): a narrow convolution, then wide ones
(:class:`DigitsWide`). Costed for a Jetson Nano and a T4 (the library's roofline), its optimal
cut moves with the bandwidth: at 50 Mbit/s and more the wide convolutions go to the server, at
20 Mbit/s and less everything stays on the device. The
embedded server runs in this process, so device and server share this machine's CPU; the
emulated link (``SplitStrategy(link=...)``, changed before every batch by
``set_link_limit``) is what differs between the runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_split import SplitStrategy
from lightning_split.planning.profile import Link

BATCH = 32


class DigitsWide(L.LightningModule):
    """A narrow first convolution (8 channels, the tensor that may cross), then wide ones: a cut worth moving.

    Per sample the wide convolutions cost about 1 ms on the Jetson Nano preset and the narrow
    tensor 2 KB each way, so the cut after the first convolution pays above about 30 Mbit/s.
    """

    def __init__(self, width: int = 160) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(8, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
        )  # fmt: skip
        self.example_input_array = torch.zeros(BATCH, 1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class FollowTrace(Callback):
    """Sets the strategy's emulated link to the trace's link of each batch, before the batch runs."""

    def __init__(self, links: Sequence[Link]) -> None:
        self.links = list(links)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        trainer.strategy.set_link_limit(self.links[min(batch_idx, len(self.links) - 1)])


def digits_profile() -> Any:
    """:class:`DigitsWide`'s profile by the library's roofline for a Jetson Nano and a T4, as ``cut="auto"`` plans."""
    from lightning_split.costs.estimate import estimate_profile
    from lightning_split.graph.capture import trace_module

    module = DigitsWide()
    traced = trace_module(module, (module.example_input_array,))
    profile = estimate_profile(traced, Link.from_mbps(50.0, rtt_ms=5.0), device="jetson-nano", server="t4")
    profile.extra["model"] = f"DigitsWide (benchmarks/_traces_measured.py), batch {BATCH}x1x8x8, jetson-nano + t4"
    return profile


def digits_loader() -> DataLoader:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False, drop_last=True)


def train_following(links: Sequence[Link], replan_every: int | None) -> float:
    """Wall seconds of ``len(links)`` training steps with the link following ``links`` (``cut="auto"``)."""
    torch.manual_seed(0)
    strategy = SplitStrategy(
        cut="auto",
        link=links[0],
        costs="estimate",
        costs_options={"device": "jetson-nano", "server": "t4"},
        replan_every=replan_every,
    )
    trainer = L.Trainer(
        max_steps=len(links),
        strategy=strategy,
        callbacks=[FollowTrace(links)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    trainer.fit(DigitsWide(), digits_loader())
    return time.perf_counter() - started
