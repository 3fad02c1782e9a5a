"""Prediction benchmark: does split training run as fast as the planner predicts, at each bandwidth?

Real split training on loopback against a ``lightning-split serve`` subprocess, with the link
limited by the client's emulator (``SplitStrategy(link="20mbit,2ms")``) to a few bandwidths.
For each bandwidth the strategy plans with ``cut="auto"``: node costs measured on both sides
(cached on disk), the link measured over the limited connection. The measured median step
time is compared with the plan's predicted step time (``docs/cost-model.md``), and the
placement chosen is compared with the best placement for the *emulated* link (the same node
costs planned again with the limit itself instead of the measured link).

One machine plays both roles, so both would be equally fast and the optimum would always be
"everything on the device". The server is made faster honestly: this process (the device)
computes with 1 torch thread, the server with ``serve --threads 2``. On a 2-core machine they
do not compete: in split training the device waits while the server computes and vice versa.

Also measured the same way: local training (no strategy), forced placements (everything on the
device, everything on the server) at some bandwidths with their predicted times from the same
profile, and the start-up time with an empty profile cache (cold) against a second start that
finds the node costs in the cache.

Every step is timed from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward,
optimizer step); the first ``--warmup`` steps of each fit are dropped.

Usage::

    python benchmarks/prediction.py                 # ResNet-18, 5/20/100 Mbit/s and unlimited, rtt 2 ms
    python benchmarks/prediction.py --publish       # ... and copy the chart to benchmarks/results/
    python benchmarks/prediction.py --quick         # a small conv net, two bandwidths, few steps
    python benchmarks/prediction.py --steady-malloc # glibc keeps freed memory (see steady_malloc)

Results and why predictions miss: ``benchmarks/RESULTS.md``, "Predictions and end-to-end training".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
RESULTS = ROOT / "benchmarks" / "results"
TOLERANCE = 0.15
BATCH = 32


class SmallConvNet(L.LightningModule):
    """Four conv layers and a linear head on 3x32x32 images: the ``--quick`` model (a few ms per step)."""

    def __init__(self, num_classes: int = 10, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, num_classes))
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What one benchmark run trains and at which link limits."""

    model_path: str
    model_text: str
    bandwidths: tuple[str, ...]
    forced: tuple[tuple[str, str], ...]
    steps: int
    warmup: int
    rtt_ms: float
    server_threads: int


FULL = Setup(
    model_path="benchmarks.runtime:CifarResNet18",
    model_text="torchvision resnet18(num_classes=10), weights=None, batch 32x3x32x32, SGD(lr=0.05, momentum=0.9)",
    bandwidths=("5mbit", "20mbit", "100mbit", "unlimited"),
    forced=(("device_only", "100mbit"), ("server_only", "100mbit"), ("server_only", "unlimited")),
    steps=25,
    warmup=5,
    rtt_ms=2.0,
    server_threads=2,
)
QUICK = Setup(
    model_path="benchmarks.prediction:SmallConvNet",
    model_text="SmallConvNet (4 conv + linear), batch 32x3x32x32, SGD(lr=0.05, momentum=0.9)",
    bandwidths=("20mbit", "unlimited"),
    forced=(("server_only", "unlimited"),),
    steps=6,
    warmup=2,
    rtt_ms=2.0,
    server_threads=1,  # a smoke run on a loaded CI machine: a 2-thread server stalls when a core is busy
)


# ---------------------------------------------------------------------------------------------
# Training and timing


class StepTimer(L.Callback):
    """Wall seconds and split traffic of every training step (batch start to end), and the time to the first step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.traffic: list[dict[str, float] | None] = []  # None: no split runtime around that whole step
        self.fit_started = time.perf_counter()
        self.first_step_end_s: float | None = None
        self._start = 0.0
        self._before: Any = None

    @staticmethod
    def _stats(trainer: L.Trainer) -> Any:
        runtime = getattr(trainer.strategy, "runtime", None)
        return None if runtime is None or not runtime.is_split else runtime.stats.snapshot()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_started = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._before = self._stats(trainer)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        self.times.append(now - self._start)
        if self.first_step_end_s is None:
            self.first_step_end_s = now - self.fit_started
        after = self._stats(trainer)
        if after is None or self._before is None:
            self.traffic.append(None)
        else:
            delta = after.since(self._before)
            self.traffic.append(
                {
                    "bytes_up": float(delta.bytes_up),
                    "bytes_down": float(delta.bytes_down),
                    "remote_s": delta.round_trip_s,
                    "server_compute_s": delta.server_compute_s,
                }
            )


@dataclasses.dataclass
class Fit:
    """One training run: its per-step times (warm-up dropped), the strategy it ran with, its first-step latency."""

    times: list[float]
    traffic: list[dict[str, float] | None]
    strategy: Any
    first_step_s: float

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    def timing_json(self) -> dict[str, Any]:
        q = statistics.quantiles(self.times, n=4) if len(self.times) >= 2 else [self.median_s] * 3
        return {"median_step_s": self.median_s, "p25_step_s": q[0], "p75_step_s": q[2], "step_times_s": self.times}

    def split_json(self, emulated: Any) -> dict[str, float] | None:
        """Medians over the steps of where a split step's time went (``None`` when nothing ran on the server).

        ``device_s`` is the step minus the time spent waiting on the server; ``remote_s`` that wait;
        ``server_compute_s`` the server's forward/backward as it reports it; ``emulated_link_s`` what
        the link emulator slept for the step's bytes and two round trips; ``overhead_s`` the rest of
        the wait (serialization, the real loopback, the server's optimizer step, which it runs
        outside ``server_compute_s``).
        """
        pairs = [(step_s, t) for step_s, t in zip(self.times, self.traffic, strict=True) if t is not None]
        if not pairs:
            return None
        rows = []
        for step_s, t in pairs:
            link_s = _emulated_seconds(emulated, t["bytes_up"], t["bytes_down"])
            rows.append(
                {
                    "bytes_up": t["bytes_up"],
                    "bytes_down": t["bytes_down"],
                    "device_s": step_s - t["remote_s"],
                    "remote_s": t["remote_s"],
                    "server_compute_s": t["server_compute_s"],
                    "emulated_link_s": link_s,
                    "overhead_s": t["remote_s"] - t["server_compute_s"] - link_s,
                }
            )
        return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def _emulated_seconds(link: Any, bytes_up: float, bytes_down: float) -> float:
    """What :class:`lightning_split.transport.client.LinkEmulator` sleeps for one step of two requests."""
    return 2 * link.rtt_s + bytes_up / link.uplink_bytes_per_s + bytes_down / link.downlink_bytes_per_s


def _loader(steps: int, image: tuple[int, int, int] = (3, 32, 32)) -> DataLoader:
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(steps * BATCH, *image, generator=gen)
    y = torch.randint(0, 10, (steps * BATCH,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False, num_workers=0)


def fit(model_cls: type, strategy: Any, steps: int, warmup: int) -> Fit:
    """Train a fresh model (seed 0) for ``warmup + steps`` steps and time each one."""
    torch.manual_seed(0)
    timer = StepTimer()
    kwargs: dict[str, Any] = {} if strategy is None else {"strategy": strategy}
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=warmup + steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
        **kwargs,
    )
    trainer.fit(model_cls(), _loader(warmup + steps))
    if len(timer.times) != warmup + steps or timer.first_step_end_s is None:
        raise RuntimeError(f"expected {warmup + steps} timed steps, got {len(timer.times)}")
    return Fit(timer.times[warmup:], timer.traffic[warmup:], strategy, timer.first_step_end_s)


def plain_step_times(model_cls: type, repeats: int, image: tuple[int, int, int] = (3, 32, 32)) -> dict[str, float]:
    """Median seconds of the model's forward+backward (loss included) and of its optimizer step, without Lightning.

    The cost model predicts forward+backward only; these show how much of a measured step is
    the optimizer step and how much the training loop around it.
    """
    torch.manual_seed(0)
    model = model_cls()
    optimizer = model.configure_optimizers()
    x = torch.randn(BATCH, *image)
    y = torch.randint(0, 10, (BATCH,))

    def forward_backward() -> None:
        optimizer.zero_grad()
        model.training_step((x, y), 0).backward()

    def median_s(fn: Callable[[], None]) -> float:
        samples = []
        for _ in range(repeats + 2):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples[2:])

    return {"forward_backward_s": median_s(forward_backward), "optimizer_step_s": median_s(optimizer.step)}


#: glibc settings for ``--steady-malloc``: blocks up to 32 MiB (the most it allows) from a heap that is never trimmed.
STEADY_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def steady_malloc() -> bool:
    """Apply :data:`STEADY_MALLOC_ENV` to this process with ``mallopt``; ``False`` where there is no glibc.

    By default glibc serves large blocks with ``mmap`` and returns freed memory to the system,
    so a training step that frees and reallocates megabytes of activations and gradients pays
    page faults every time; how much depends on the allocation history of the process. Per-node
    timing and whole steps then see different allocators. With these settings both run warm.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(
        libc.mallopt(m_mmap_threshold, int(STEADY_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]))
        and libc.mallopt(m_trim_threshold, int(STEADY_MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]))
    )


# ---------------------------------------------------------------------------------------------
# What a run records


def link_json(link: Any) -> dict[str, Any]:
    """A link as JSON-safe numbers (``null`` for an unlimited rate) and a readable text."""

    def rate(value: float) -> float | None:
        return None if math.isinf(value) else value * 8 / 1e6

    return {
        "up_mbit_s": rate(link.uplink_bytes_per_s),
        "down_mbit_s": rate(link.downlink_bytes_per_s),
        "rtt_ms": link.rtt_s * 1e3,
        "message_ms": None if getattr(link, "message_s", None) is None else link.message_s * 1e3,
        "text": link.describe(),
    }


def placement_label(profile: Any, server_nodes: Sequence[str], cut: Sequence[str]) -> str:
    """``device only``, ``server only`` or the cut tensors' names."""
    server = set(server_nodes)
    if not server:
        return "device only"
    if all(node.kind == "input" for node in profile.nodes if node.name not in server):
        return "server only"
    return ",".join(cut)


def device_nodes(profile: Any, server_nodes: Sequence[str]) -> list[str]:
    server = set(server_nodes)
    return [name for name in profile.names if name not in server]


def predicted(profile: Any, server_nodes: Sequence[str]) -> dict[str, float]:
    """The predicted step time of a placement, its breakdown, and the bytes the cost model sends each way per step.

    The cost model (``docs/cost-model.md``) charges every crossing tensor up and its gradient down, and every server
    output down and its gradient up, so the bytes are the same both ways.
    """
    from lightning_split.planning import planner

    breakdown = planner.step_time(profile, device_nodes(profile, server_nodes))
    server = set(server_nodes)
    crossing = {name for node in profile.nodes if node.name in server for name in node.inputs if name not in server}
    returned = [name for name in profile.outputs if name in server]
    each_way = sum(profile.node(name).out_bytes for name in [*crossing, *returned])
    return {"total_s": breakdown.total, **breakdown.to_json(), "bytes_each_way": float(each_way)}


def auto_record(bandwidth: str, emulated: Any, run: Fit) -> dict[str, Any]:
    """Everything one ``cut="auto"`` run says about prediction against measurement."""
    from lightning_split.planning import planner

    plan = run.strategy.plan
    profile = plan.profile
    chosen = plan.spec.server_nodes
    prediction = predicted(profile, chosen)
    error = run.median_s / prediction["total_s"] - 1
    best_measured = planner.plan(profile, "full")
    for_emulated = plan.replanned(emulated)
    best_emulated = for_emulated.spec.server_nodes
    on_emulated = predicted(for_emulated.profile, chosen)["total_s"]
    return {
        "bandwidth": bandwidth,
        "link_emulated": link_json(emulated),
        "link_measured": link_json(profile.link),
        "chosen": {
            "label": placement_label(profile, chosen, plan.spec.cut),
            "cut": list(plan.spec.cut),
            "server_nodes": len(chosen),
            "device_nodes": len(profile.nodes) - len(chosen),
            "server": list(chosen),
        },
        "predicted": prediction,
        "predicted_step_s": prediction["total_s"],
        "baselines_predicted_s": dict(plan.baselines),
        "measured": run.timing_json(),
        "error": error,
        "within_tolerance": abs(error) <= TOLERANCE,
        "chosen_is_best_for_measured_link": abs(prediction["total_s"] - best_measured.predicted_step_s)
        <= 1e-9 * max(1.0, best_measured.predicted_step_s),
        "emulated_link_plan": {
            "label": placement_label(for_emulated.profile, best_emulated, for_emulated.spec.cut),
            "predicted_step_s": for_emulated.predicted_step_s(),
            "chosen_predicted_step_s": on_emulated,
            "chosen_is_best": tuple(best_emulated) == tuple(chosen),
        },
        "split": run.split_json(emulated),
        "startup": startup_json(run),
        "profile": profile.to_json(),
    }


def device_cost_check(profile: dict[str, Any], plain: dict[str, float], local: dict[str, Any]) -> dict[str, float]:
    """The device's node costs summed (the predicted device-only step) against whole steps timed on the device.

    The node costs are calibrated (scaled to a whole forward+backward timed while profiling) and
    include the optimizer step; the profile's ``*_raw_sum_s``, ``*_whole_s``, ``*_scale`` and
    ``*_optimizer_s`` say by how much, on both sides. ``node_sum_over_plain_step`` compares the
    node sum with forward+backward+optimizer step timed here without Lightning; the training
    loop comes on top in a real step.
    """
    node_sum = sum(node["device_s"] for node in profile["nodes"])
    plain_step = plain["forward_backward_s"] + plain["optimizer_step_s"]
    calibration = {
        f"{side}_{name}": profile.get(f"{side}_{name}")
        for side in ("device", "server")
        for name in ("raw_sum_s", "whole_s", "scale", "optimizer_s")
    }
    return {
        "node_sum_s": node_sum,
        "forward_backward_s": plain["forward_backward_s"],
        "optimizer_step_s": plain["optimizer_step_s"],
        "local_step_s": local["median_step_s"],
        "node_sum_over_plain_step": node_sum / plain_step,
        "loop_overhead_s": local["median_step_s"] - plain_step,
        **calibration,
    }


def startup_json(run: Fit) -> dict[str, Any]:
    """Profiling and planning times of a run's start, and whether its node costs came from the cache."""
    notes = run.strategy.plan.notes
    return {
        "first_step_end_s": run.first_step_s,
        "profile_s": notes.get("profile_s"),
        "plan_s": notes.get("plan_s"),
        "device_costs": notes.get("device_costs"),
        "server_costs": notes.get("server_costs"),
    }


FORCED_CUTS: dict[str, Callable[[Any], list[str]]] = {
    "device_only": lambda profile: [profile.outputs[-1]],
    "server_only": lambda profile: [node.name for node in profile.nodes if node.kind == "input"],
}


def forced_record(
    name: str, bandwidth: str, emulated: Any, run: Fit, auto: dict[str, Any], profile: Any
) -> dict[str, Any]:
    """A forced placement's measured time against its prediction on the ``cut="auto"`` run's profile."""
    spec = run.strategy.plan.spec
    prediction = predicted(profile, spec.server_nodes)
    return {
        "placement": name,
        "bandwidth": bandwidth,
        "label": placement_label(profile, spec.server_nodes, spec.cut),
        "predicted": prediction,
        "predicted_step_s": prediction["total_s"],
        "measured": run.timing_json(),
        "split": run.split_json(emulated),
        "error": run.median_s / prediction["total_s"] - 1,
        "within_tolerance": abs(run.median_s / prediction["total_s"] - 1) <= TOLERANCE,
        "auto_measured_median_s": auto["measured"]["median_step_s"],
    }


def pipelined_record(
    micro_batches: int, bandwidth: str, run: Fit, auto: dict[str, Any], profile: Any
) -> dict[str, Any]:
    """A run with ``micro_batches`` on the ``cut="auto"`` run's placement against ``T_M`` of the same profile.

    ``T_M`` (``lightning_split.planning.pipelined``) charges ``link.message_s`` (measured with the link)
    ``2 * M`` times; ``T_1`` of the same placement is given too, so the predicted and the measured ratio
    to the M=1 run can be compared.
    """
    from lightning_split.planning.pipelined import pipelined_step_time

    spec = run.strategy.plan.spec
    device = device_nodes(profile, spec.server_nodes)
    terms, sequential = pipelined_step_time(profile, device, micro_batches), pipelined_step_time(profile, device, 1)
    m1 = auto["measured"]["median_step_s"]
    return {
        "micro_batches": micro_batches,
        "micro_batches_used": run.strategy.micro_batches,
        "bandwidth": bandwidth,
        "label": placement_label(profile, spec.server_nodes, spec.cut),
        "message_s": profile.link.message_s,
        "predicted": terms.to_json(),
        "predicted_step_s": terms.total,
        "predicted_m1_step_s": sequential.total,
        "measured": run.timing_json(),
        "error": run.median_s / terms.total - 1,
        "within_tolerance": abs(run.median_s / terms.total - 1) <= TOLERANCE,
        "m1_measured_median_s": m1,
        "measured_ratio_to_m1": run.median_s / m1,
        "predicted_ratio_to_m1": terms.total / sequential.total,
    }


def pipelined_table(rows: Sequence[dict[str, Any]]) -> str:
    """The micro-batched runs: predicted ``T_M`` against measured, and both ratios to M=1."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import render_table

    header = ("M", "link limit", "placement", "message_s ms", "pred ms", "meas ms", "error", "<=15%",
              "pred / M=1", "meas / M=1")  # fmt: skip
    body = [
        (
            str(row["micro_batches_used"]), row["bandwidth"], _short(row["label"]),
            f"{(row['message_s'] or 0) * 1e3:.2f}", f"{row['predicted_step_s'] * 1e3:.1f}",
            f"{row['measured']['median_step_s'] * 1e3:.1f}", f"{row['error'] * 100:+.1f}%",
            "yes" if row["within_tolerance"] else "NO", f"{row['predicted_ratio_to_m1']:.2f}",
            f"{row['measured_ratio_to_m1']:.2f}",
        )
        for row in rows
    ]  # fmt: skip
    return render_table(header, body, left=3)


# ---------------------------------------------------------------------------------------------
# Output


def table(runs: Sequence[dict[str, Any]], forced: Sequence[dict[str, Any]], local: dict[str, Any]) -> str:
    """The plain-text results table: one row per auto run, forced placement and local training."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import render_table

    header = ("run", "link limit", "measured link", "placement", "pred ms", "meas ms", "p25-p75", "error", "<=15%",
              "best (emulated)")  # fmt: skip
    rows = []
    for run in runs:
        m = run["measured"]
        emulated = run["emulated_link_plan"]
        rows.append(
            (
                "auto",
                run["bandwidth"],
                _short_link(run["link_measured"]),
                _short(run["chosen"]["label"]),
                f"{run['predicted_step_s'] * 1e3:.1f}",
                f"{m['median_step_s'] * 1e3:.1f}",
                f"{m['p25_step_s'] * 1e3:.0f}-{m['p75_step_s'] * 1e3:.0f}",
                f"{run['error'] * 100:+.1f}%",
                "yes" if run["within_tolerance"] else "NO",
                "same" if emulated["chosen_is_best"] else _short(emulated["label"]),
            )
        )
    for row in forced:
        m = row["measured"]
        rows.append(
            (
                row["placement"], row["bandwidth"], "", row["label"], f"{row['predicted_step_s'] * 1e3:.1f}",
                f"{m['median_step_s'] * 1e3:.1f}", f"{m['p25_step_s'] * 1e3:.0f}-{m['p75_step_s'] * 1e3:.0f}",
                f"{row['error'] * 100:+.1f}%", "yes" if row["within_tolerance"] else "NO", "",
            )
        )  # fmt: skip
    rows.append(
        ("local", "-", "", "no strategy", "", f"{local['median_step_s'] * 1e3:.1f}",
         f"{local['p25_step_s'] * 1e3:.0f}-{local['p75_step_s'] * 1e3:.0f}", "", "", "")
    )  # fmt: skip
    return render_table(header, rows, left=4)


def breakdown_table(runs: Sequence[dict[str, Any]], forced: Sequence[dict[str, Any]]) -> str:
    """Predicted terms against measured parts of a step, per run (ms): where a prediction misses."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import render_table

    header = ("run", "link limit", "dev pred", "dev meas", "srv pred", "srv meas", "link pred", "link emul", "other",
              "step pred", "step meas", "KiB pred up=down", "KiB up", "KiB down")  # fmt: skip
    rows = []
    for name, row in [("auto", run) for run in runs] + [(f["placement"], f) for f in forced]:
        p, m = row["predicted"], row.get("split")
        link_pred = p["upload_s"] + p["download_s"] + p["rtt_s"]
        if m is None:  # nothing ran on the server: the whole step is the device's
            m = {"device_s": row["measured"]["median_step_s"], "server_compute_s": 0.0, "emulated_link_s": 0.0,
                 "overhead_s": 0.0}  # fmt: skip
        cells = (p["device_s"], m["device_s"], p["server_s"], m["server_compute_s"], link_pred, m["emulated_link_s"],
                 m["overhead_s"], p["total_s"], row["measured"]["median_step_s"])  # fmt: skip
        sizes = (p["bytes_each_way"], m.get("bytes_up", 0.0), m.get("bytes_down", 0.0))
        rows.append(
            (name, row["bandwidth"], *(f"{value * 1e3:.1f}" for value in cells), *(f"{b / 1024:.0f}" for b in sizes))
        )
    return render_table(header, rows, left=2)


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 3] + "..."


def _short_link(link: dict[str, Any]) -> str:
    def rate(value: float | None) -> str:
        return "inf" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"

    return f"{rate(link['up_mbit_s'])}/{rate(link['down_mbit_s'])} Mbit/s {link['rtt_ms']:.1f} ms"


def chart(report: dict[str, Any], path: Path) -> None:
    """Predicted and measured step time against the link limit, the chosen placement written at each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    runs = report["runs"]
    finite = [r["link_emulated"]["up_mbit_s"] for r in runs if r["link_emulated"]["up_mbit_s"] is not None]
    top = max(finite) if finite else 100.0
    unlimited_x = top * 4

    def x_of(bandwidth: str) -> float:
        rate = link_json(_parse(bandwidth, report["rtt_ms"]))["up_mbit_s"]
        return unlimited_x if rate is None else rate

    xs = [x_of(r["bandwidth"]) for r in runs]
    figure, axes = plt.subplots(figsize=(10, 4.8), dpi=90)
    pred = [r["predicted_step_s"] * 1e3 for r in runs]
    meas = [r["measured"]["median_step_s"] * 1e3 for r in runs]
    low = [m - r["measured"]["p25_step_s"] * 1e3 for m, r in zip(meas, runs)]
    high = [r["measured"]["p75_step_s"] * 1e3 - m for m, r in zip(meas, runs)]
    axes.plot(xs, pred, "o--", color="tab:blue", label="cut='auto': predicted")
    axes.errorbar(xs, meas, yerr=[low, high], fmt="s-", color="tab:orange", capsize=3,
                  label="cut='auto': measured median (p25-p75)")  # fmt: skip
    axes.fill_between(xs, [p * (1 - TOLERANCE) for p in pred], [p * (1 + TOLERANCE) for p in pred],
                      color="tab:blue", alpha=0.12, label="predicted +-15%")  # fmt: skip
    for x, m, r in zip(xs, meas, runs):
        axes.annotate(_short(r["chosen"]["label"], 22), (x, m), textcoords="offset points", xytext=(4, 8),
                      fontsize=7, rotation=20)  # fmt: skip
    markers = {"device_only": "^", "server_only": "v"}
    for name in sorted({row["placement"] for row in report["forced"]}):
        rows = [row for row in report["forced"] if row["placement"] == name]
        fx = [x_of(row["bandwidth"]) for row in rows]
        axes.scatter(
            fx,
            [row["measured"]["median_step_s"] * 1e3 for row in rows],
            marker=markers.get(name, "x"),
            color="tab:red",
            label=f"{name.replace('_', ' ')}: measured",
            zorder=3,
        )
        axes.scatter(
            fx,
            [row["predicted_step_s"] * 1e3 for row in rows],
            marker=markers.get(name, "x"),
            facecolors="none",
            edgecolors="tab:red",
            label=f"{name.replace('_', ' ')}: predicted",
            zorder=3,
        )
    axes.axhline(report["local"]["median_step_s"] * 1e3, color="gray", linestyle=":", label="local training (measured)")
    axes.set_xscale("log")
    ticks = sorted(set(xs))
    axes.set_xticks(ticks)
    axes.set_xticklabels(["unlimited" if t == unlimited_x else f"{t:g}" for t in ticks])
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlim(min(ticks) / 1.6, max(ticks) * 1.8)
    axes.set_xlabel(f"emulated link limit, Mbit/s up and down (rtt {report['rtt_ms']:g} ms)")
    axes.set_ylabel("training step, ms")
    axes.set_ylim(0, axes.get_ylim()[1] * 1.15)
    axes.set_title(f"Predicted vs measured step time: {report['model_short']}", fontsize=10)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _parse(bandwidth: str, rtt_ms: float) -> Any:
    from lightning_split.planning.profile import Link

    return Link.parse(f"{bandwidth},{rtt_ms:g}ms")


def _machine_info() -> dict[str, Any]:
    """benchmarks/_common.py's machine record (imported lazily: the server imports this module too)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine_info

    return machine_info(("torch", "torchvision", "lightning", "websockets", "matplotlib"))


# ---------------------------------------------------------------------------------------------
# The benchmark


def device_only_spread(
    runs: list[dict[str, Any]], forced: list[dict[str, Any]], pipelined: list[dict[str, Any]]
) -> dict[str, Any]:
    """How far apart the fits that ran everything on the device came out: the same work each time.

    Their medians differ only by the machine's noise between fits (other tenants, memory layout),
    which bounds how close any prediction can be.
    """
    medians = [row["measured"]["median_step_s"] for row in runs if row["chosen"]["label"] == "device only"]
    medians += [row["measured"]["median_step_s"] for row in (*forced, *pipelined) if row["label"] == "device only"]
    if not medians:
        return {"fits": 0, "medians_s": []}
    middle = statistics.median(medians)
    return {
        "fits": len(medians),
        "medians_s": medians,
        "min_s": min(medians),
        "max_s": max(medians),
        "spread": (max(medians) - min(medians)) / middle,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small conv net, two bandwidths, few steps")
    parser.add_argument("--bandwidths", help="comma-separated link limits, e.g. 5mbit,20mbit,100mbit,unlimited")
    parser.add_argument("--steps", type=int, help="measured steps per fit (after the warm-up)")
    parser.add_argument("--warmup", type=int, help="steps dropped at the start of every fit")
    parser.add_argument("--rtt-ms", type=float, help="emulated round trip in ms (default 2)")
    parser.add_argument("--device-threads", type=int, default=1, help="torch threads of this process (the device)")
    parser.add_argument("--server-threads", type=int, help="torch threads of the serve process (2; --quick: 1)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/out/prediction.json)")
    parser.add_argument("--publish", action="store_true", help="copy the chart to benchmarks/results/")
    parser.add_argument("--micro-batches", default="1,4", help="M values; each M > 1 reruns every bandwidth's cut")
    parser.add_argument(
        "--pipelined-cut",
        choices=("m1", "auto"),
        default="m1",
        help="M > 1 runs: the M=1 run's cut (m1, skipped when it is device only) or their own plan for T_M (auto)",
    )
    parser.add_argument(
        "--pipelined-also",
        metavar="CUT",
        help="with --pipelined-cut auto: also run each M > 1 cut at CUT (node names, comma-separated), "
        "predicted from the auto run's profile (which holds the costs each micro-batch pays)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the device on CPU 0, the server on CPU 1: a pipelined step overlaps them instead of sharing cores",
    )
    parser.add_argument(
        "--steady-malloc",
        action="store_true",
        help="keep freed memory in glibc's heap on both sides (no mmap/trim page faults every step)",
    )
    args = parser.parse_args(argv)

    base = QUICK if args.quick else FULL
    setup = dataclasses.replace(
        base,
        bandwidths=tuple(args.bandwidths.split(",")) if args.bandwidths else base.bandwidths,
        steps=args.steps or base.steps,
        warmup=base.warmup if args.warmup is None else args.warmup,
        rtt_ms=base.rtt_ms if args.rtt_ms is None else args.rtt_ms,
        server_threads=args.server_threads or base.server_threads,
    )
    forced = tuple((name, bw) for name, bw in setup.forced if bw in setup.bandwidths)
    out = args.out or OUT / ("prediction_quick.json" if args.quick else "prediction.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    chart_path = out.with_suffix(".png")

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import importlib

    module_name, class_name = setup.model_path.split(":")
    model_cls = getattr(importlib.import_module(module_name), class_name)
    from lightning_split import SplitStrategy

    torch.set_num_threads(args.device_threads)
    if args.pin:
        if len(os.sched_getaffinity(0)) < 2:
            parser.error("--pin needs two CPUs")
        os.sched_setaffinity(0, {0})
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_split"):
        logging.getLogger(name).setLevel(logging.ERROR)

    cache_dir = Path(tempfile.mkdtemp(prefix="lightning-split-prediction-cache-"))
    log_path = Path(tempfile.gettempdir()) / f"lightning-split-prediction-server-{os.getpid()}.log"
    if args.steady_malloc and not steady_malloc():
        parser.error("--steady-malloc needs glibc")
    from _common import ServeProcess

    server = ServeProcess(
        setup.model_path,
        log_path,
        "--threads",
        str(setup.server_threads),
        extra_env=STEADY_MALLOC_ENV if args.steady_malloc else None,
        cpus={1} if args.pin else None,
    )
    print(
        f"{setup.model_text}\ndevice: this process, {torch.get_num_threads()} torch thread(s); server: "
        f"{' '.join(server.command[1:])} at {server.url}\n{setup.warmup} warm-up + {setup.steps} timed steps per fit; "
        f"rtt {setup.rtt_ms:g} ms; profile cache {cache_dir} (empty at start)",
        flush=True,
    )

    def strategy(bandwidth: str, cut: Any = "auto", micro_batches: int = 1) -> Any:
        return SplitStrategy(
            server=server.url,
            cut=cut,
            model=setup.model_path,
            link=_parse(bandwidth, setup.rtt_ms),
            costs="measure",
            costs_options={"cache": cache_dir},
            micro_batches=micro_batches,
            micro_batch_statistics=micro_batches > 1,  # ResNet-18's BatchNorm: a timing run, not an exact one
            private_inputs=False,  # the cost model is checked on every placement, server-only (raw input sent) too
        )

    started = time.perf_counter()
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    forced_rows: list[dict[str, Any]] = []
    pipelined_rows: list[dict[str, Any]] = []
    try:
        local_fit = fit(model_cls, None, setup.steps, setup.warmup)
        plain = plain_step_times(model_cls, max(3, setup.steps // 3))
        print(
            f"  local{'':<22}median {local_fit.median_s * 1e3:8.1f} ms; without Lightning: forward+backward "
            f"{plain['forward_backward_s'] * 1e3:.1f} ms, optimizer step {plain['optimizer_step_s'] * 1e3:.1f} ms",
            flush=True,
        )
        # Start-up: a one-step fit finds the cache empty (cold), the next one finds it filled (cached).
        cold_bandwidth = setup.bandwidths[-1]
        startups = [startup_json(fit(model_cls, strategy(cold_bandwidth), 1, 0)) for _ in ("cold", "cached")]
        cold_startup, cached_startup = startups
        print(
            f"  start-up at {cold_bandwidth}: profiling {cold_startup['profile_s']:.2f} s cold, "
            f"{cached_startup['profile_s']:.3f} s cached",
            flush=True,
        )
        order = setup.bandwidths
        profiles: dict[str, Any] = {}
        by_bandwidth: dict[str, dict[str, Any]] = {}
        for bandwidth in order:
            run = fit(model_cls, strategy(bandwidth), setup.steps, setup.warmup)
            record = auto_record(bandwidth, _parse(bandwidth, setup.rtt_ms), run)
            by_bandwidth[bandwidth] = record
            profiles[bandwidth] = run.strategy.plan.profile
            print(
                f"  auto {bandwidth:<10} {record['chosen']['label'][:40]:<40} predicted "
                f"{record['predicted_step_s'] * 1e3:8.1f} ms, measured {run.median_s * 1e3:8.1f} ms "
                f"({record['error'] * 100:+.1f}%)",
                flush=True,
            )
        runs = [by_bandwidth[bw] for bw in setup.bandwidths]
        for name, bandwidth in forced:
            profile = profiles[bandwidth]
            run = fit(model_cls, strategy(bandwidth, FORCED_CUTS[name](profile)), setup.steps, setup.warmup)
            row = forced_record(name, bandwidth, _parse(bandwidth, setup.rtt_ms), run, by_bandwidth[bandwidth], profile)
            forced_rows.append(row)
            print(
                f"  {name:<11} {bandwidth:<10} predicted {row['predicted_step_s'] * 1e3:8.1f} ms, "
                f"measured {run.median_s * 1e3:8.1f} ms ({row['error'] * 100:+.1f}%)",
                flush=True,
            )
        for m in (int(v) for v in args.micro_batches.split(",") if int(v) > 1):
            for bandwidth in order:
                if args.pipelined_cut == "auto":
                    run = fit(model_cls, strategy(bandwidth, "auto", m), setup.steps, setup.warmup)
                    profile = run.strategy.plan.profile
                else:
                    if by_bandwidth[bandwidth]["chosen"]["label"] == "device only":
                        continue  # no server part: nothing to pipeline
                    cut = list(by_bandwidth[bandwidth]["chosen"]["cut"])
                    run = fit(model_cls, strategy(bandwidth, cut, m), setup.steps, setup.warmup)
                    profile = profiles[bandwidth]
                runs_m = [(run, profile)]
                if args.pipelined_also and args.pipelined_cut == "auto":  # the same M on a split, priced alike
                    forced = fit(model_cls, strategy(bandwidth, args.pipelined_also.split(","), m), setup.steps,
                                 setup.warmup)  # fmt: skip
                    runs_m.append((forced, profile))
                for timed, priced in runs_m:
                    row = pipelined_record(m, bandwidth, timed, by_bandwidth[bandwidth], priced)
                    pipelined_rows.append(row)
                    print(
                        f"  M={m:<9} {bandwidth:<10} {_short(row['label'], 20):<20} predicted "
                        f"{row['predicted_step_s'] * 1e3:8.1f} ms, measured {timed.median_s * 1e3:8.1f} ms "
                        f"({row['error'] * 100:+.1f}%), {row['measured_ratio_to_m1']:.2f}x M=1",
                        flush=True,
                    )
    finally:
        server.stop()
        shutil.rmtree(cache_dir, ignore_errors=True)
    elapsed = time.perf_counter() - started

    local = local_fit.timing_json()
    within = [run["bandwidth"] for run in runs if run["within_tolerance"]]
    report: dict[str, Any] = {
        "benchmark": "prediction",
        "quick": args.quick,
        "steady_malloc": args.steady_malloc,
        "model": setup.model_path,
        "model_text": setup.model_text,
        "model_short": setup.model_path.split(":")[1] + f", batch {BATCH}",
        "input": [BATCH, 3, 32, 32],
        "bandwidths": list(setup.bandwidths),
        "rtt_ms": setup.rtt_ms,
        "warmup_steps": setup.warmup,
        "timed_steps": setup.steps,
        "tolerance": TOLERANCE,
        "threads": {"device": torch.get_num_threads(), "server": setup.server_threads},
        "pinned": args.pin,
        "pipelined_cut": args.pipelined_cut,
        "server_command": " ".join(server.command[1:]),
        "machine": _machine_info(),
        "elapsed_s": elapsed,
        "load_average": {"start": list(load_before), "end": list(os.getloadavg())},
        "local": local,
        "plain_step": plain,
        "device_cost_check": device_cost_check(runs[0]["profile"], plain, local),
        "runs": runs,
        "forced": forced_rows,
        "pipelined": pipelined_rows,
        "startup": {
            "bandwidth": cold_bandwidth,
            "cold": cold_startup,
            "cached": cached_startup,
            "profile_speedup": (cold_startup["profile_s"] or 0) / max(cached_startup["profile_s"] or 0, 1e-9),
            "first_step_saved_s": cold_startup["first_step_end_s"] - cached_startup["first_step_end_s"],
        },
        "summary": {
            "within_tolerance": within,
            "all_within_tolerance": len(within) == len(runs),
            "chosen_is_best_for_measured_link": all(r["chosen_is_best_for_measured_link"] for r in runs),
            "chosen_is_best_for_emulated_link": [
                r["bandwidth"] for r in runs if r["emulated_link_plan"]["chosen_is_best"]
            ],
            "best_auto_vs_local": min(r["measured"]["median_step_s"] for r in runs) / local["median_step_s"],
            "auto_vs_local": {r["bandwidth"]: r["measured"]["median_step_s"] / local["median_step_s"] for r in runs},
        },
    }
    report["summary"]["device_only_fits"] = device_only_spread(runs, forced_rows, pipelined_rows)
    out.write_text(json.dumps(report, indent=2) + "\n")
    chart(report, chart_path)

    print()
    print(table(runs, forced_rows, local))
    print("\nwhere the time went (median ms per step; 'other' = waiting on the server minus its compute and the")
    print("emulated link: serialization, loopback, the server's optimizer step):")
    print(breakdown_table(runs, forced_rows))
    if pipelined_rows:
        print("\nmicro-batched runs on the cut='auto' placements (ResNet-18: per-micro-batch BatchNorm statistics):")
        print(pipelined_table(pipelined_rows))
    print(
        f"\nwithin {TOLERANCE:.0%} of the prediction: {', '.join(within) or 'none'} of {len(runs)}; "
        f"placement = best for the measured link: {report['summary']['chosen_is_best_for_measured_link']}"
    )
    spread = report["summary"]["device_only_fits"]
    if spread["fits"] > 1:
        print(
            f"the same work, device only, in {spread['fits']} fits of this run: median {spread['min_s'] * 1e3:.1f} to "
            f"{spread['max_s'] * 1e3:.1f} ms ({spread['spread']:.0%} of the middle one): the noise floor of 'error'"
        )
    print(
        f"start-up at {cold_bandwidth}: cold cache {cold_startup['first_step_end_s']:.2f} s to the first step's end "
        f"(profiling {cold_startup['profile_s']:.2f} s), cached {cached_startup['first_step_end_s']:.2f} s "
        f"(profiling {cached_startup['profile_s']:.3f} s)"
    )
    check = report["device_cost_check"]
    print(
        f"device: node costs sum to {check['node_sum_s'] * 1e3:.1f} ms (one by one "
        f"{(check['device_raw_sum_s'] or 0) * 1e3:.1f} ms, calibrated x{check['device_scale'] or 1:.3f} to a whole "
        f"pass of {(check['device_whole_s'] or 0) * 1e3:.1f} ms, plus the optimizer step "
        f"{(check['device_optimizer_s'] or 0) * 1e3:.1f} ms); without Lightning a forward+backward takes "
        f"{check['forward_backward_s'] * 1e3:.1f} ms and the optimizer step {check['optimizer_step_s'] * 1e3:.1f} ms, "
        f"the rest of a local step {check['loop_overhead_s'] * 1e3:.1f} ms"
    )
    print(
        f"server: one by one {(check['server_raw_sum_s'] or 0) * 1e3:.1f} ms, calibrated "
        f"x{check['server_scale'] or 1:.3f} to {(check['server_whole_s'] or 0) * 1e3:.1f} ms, plus the optimizer step "
        f"{(check['server_optimizer_s'] or 0) * 1e3:.1f} ms"
    )
    print(f"{elapsed:.0f} s measuring; wrote {out} and {chart_path}")
    if args.publish:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(chart_path, RESULTS / "prediction.png")
        print(f"copied the chart to {RESULTS / 'prediction.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
