"""Runtime benchmark: step time and traffic of split training against local training.

ResNet-18 (torchvision, ``num_classes=10``, no pretrained weights) on CIFAR-sized synthetic
data (batch 32 x 3 x 32 x 32, fixed seed), plain SGD, trained with Lightning on the CPU in
three configurations:

- ``local``: no strategy, the whole model in this process;
- ``split-serve``: ``SplitStrategy(server=ws://127.0.0.1:PORT, cut=CUT)`` against a real
  ``python -m lightning_split.cli serve`` process on loopback;
- ``split-embedded``: ``SplitStrategy(server=None, cut=CUT)``, the same server code on a
  background thread of this process.

Both processes are pinned to one intra-op thread (``torch.set_num_threads(1)`` here,
``OMP_NUM_THREADS=1`` for the server) so that on a small machine they do not fight over cores;
a split step is then device part + transfer + server part, run one after the other, and the
ratio to local shows the pure overhead of splitting.

The configurations alternate over several rounds (the order rotates each round) to spread
machine noise over all of them. In every fit the first ``--warmup`` steps are dropped; each
remaining step is timed from ``on_train_batch_start`` to ``on_train_batch_end`` (forward,
backward and optimizer step). Traffic comes from the split runtime's ``Traffic`` counters: bytes
up/down per step, time spent waiting on the server (``round_trip_s``) and the server's own
compute (``server_compute_s``); their difference is serialization + websocket transfer +
scheduling, which is the overhead reported as ``wire``.

Usage::

    python benchmarks/runtime.py [--steps 40] [--rounds 2] [--warmup 5] [--cut layer1]
                                 [--no-embedded] [--out benchmarks/out/runtime.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = "benchmarks.runtime:CifarResNet18"
BATCH = 32
TARGET_RATIO = 1.15


class CifarResNet18(L.LightningModule):
    """torchvision ResNet-18 for 10 classes, trained with SGD."""

    def __init__(self, num_classes: int = 10, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class MicroBatchedResNet18(CifarResNet18):
    """CifarResNet18 whose forward runs the batch as ``micro_batches`` pieces, one after the other.

    Local training with the compute of a micro-batched split step (each piece's BatchNorm uses
    its own statistics, as ``micro_batch_statistics=True`` does): against it, a pipelined split
    step shows what the split adds, apart from what micro-batches cost the CPU.
    """

    micro_batches = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(piece) for piece in x.chunk(self.micro_batches)])


class StepTimer(L.Callback):
    """Wall time and split traffic of every training step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.traffic: list[dict[str, float]] = []
        self._start = 0.0
        self._before: Any = None

    @staticmethod
    def _stats(trainer: L.Trainer) -> Any:
        runtime = getattr(trainer.strategy, "runtime", None)
        stats = getattr(runtime, "stats", None)
        return None if stats is None else dataclasses.replace(stats)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._before = self._stats(trainer)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)
        after = self._stats(trainer)
        if after is not None and self._before is not None:
            self.traffic.append(
                {
                    "bytes_up": after.bytes_up - self._before.bytes_up,
                    "bytes_down": after.bytes_down - self._before.bytes_down,
                    "round_trip_s": after.round_trip_s - self._before.round_trip_s,
                    "server_compute_s": after.server_compute_s - self._before.server_compute_s,
                    "requests": after.requests - self._before.requests,
                }
            )


@dataclasses.dataclass
class Result:
    name: str
    times: list[float] = dataclasses.field(default_factory=list)
    traffic: list[dict[str, float]] = dataclasses.field(default_factory=list)
    cut_rows: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)

    def median(self, key: str | None = None) -> float:
        if key is None:
            return statistics.median(self.times)
        return statistics.median(t[key] for t in self.traffic) if self.traffic else 0.0


def _loader(steps: int, batch: int = BATCH) -> DataLoader:
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(steps * batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (steps * batch,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False, num_workers=0)


def _fit(model_cls: type, strategy: Any, steps: int, batch: int = BATCH) -> tuple[StepTimer, Any]:
    torch.manual_seed(0)
    model = model_cls()
    timer = StepTimer()
    kwargs: dict[str, Any] = {} if strategy is None else {"strategy": strategy}
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
        **kwargs,
    )
    trainer.fit(model, _loader(steps, batch))
    if len(timer.times) != steps:
        raise RuntimeError(f"expected {steps} timed steps, got {len(timer.times)}")
    return timer, strategy


def _server_step_estimate(model_cls: type, cut: str, repeats: int = 15) -> float | None:
    """Median seconds of the server's SGD step (momentum) for a top-level cut, timed in this process.

    The server applies ``step``/``zero_grad`` as deferred ops outside its ``compute_s``, so
    this time is part of what the table reports as ``wire``.
    """
    torch.manual_seed(0)
    net = model_cls().model
    names = [name for name, _ in net.named_children()]
    child = cut.removeprefix("model.")
    if child not in names:
        return None
    params = [p for name in names[names.index(child) + 1 :] for p in getattr(net, name).parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def _kb(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="measured steps per config, over all rounds")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (one fit per config per round)")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of every fit")
    parser.add_argument(
        "--cut", default="layer1", help="module path of the ResNet the device keeps, with its ancestors (e.g. layer2)"
    )
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded-server config")
    parser.add_argument("--batch", type=int, default=BATCH, help="samples per step")
    parser.add_argument(
        "--micro-batches",
        type=int,
        default=1,
        help="also run the embedded server with M micro-batches (per-micro-batch BatchNorm: timing, not exactness)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "runtime.json")
    args = parser.parse_args(argv)

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    # The class the server imports, so both sides agree on the model's class path.
    model_cls = importlib.import_module(MODEL_PATH.split(":")[0]).CifarResNet18
    from lightning_split import SplitStrategy

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_split"):
        logging.getLogger(name).setLevel(logging.ERROR)

    # The LightningModule holds the ResNet as ``self.model``: ``layer1`` means ``model.layer1``.
    cut = args.cut if args.cut.startswith("model") else f"model.{args.cut}"
    per_fit = max(1, -(-args.steps // args.rounds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = Path(tempfile.gettempdir()) / f"lightning-split-bench-server-{os.getpid()}.log"
    print(
        f"ResNet-18, batch {args.batch}x3x32x32, SGD, cut={cut!r}; {args.rounds} rounds x {per_fit} steps "
        f"(+{args.warmup} warm-up) per config; torch threads: 1 here, OMP_NUM_THREADS=1 for the server",
        flush=True,
    )
    from _common import ServeProcess

    server = ServeProcess(MODEL_PATH, log_path, extra_env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    url = server.url
    print(f"server process pid {server.proc.pid} at {url}", flush=True)

    # each config: the LightningModule class and a function making its strategy (None: local training)
    configs: dict[str, tuple[type, Any]] = {
        "local": (model_cls, lambda: None),
        "split-serve": (model_cls, lambda: SplitStrategy(server=url, cut=cut, model=MODEL_PATH)),
    }
    if not args.no_embedded:
        configs["split-embedded"] = (model_cls, lambda: SplitStrategy(server=None, cut=cut))
    if not args.no_embedded and args.micro_batches > 1:
        m = args.micro_batches
        configs[f"split-embedded-m{m}"] = (
            model_cls,
            lambda: SplitStrategy(server=None, cut=cut, micro_batches=m, micro_batch_statistics=True),
        )
        configs[f"local-m{m}"] = (type("MicroBatched", (MicroBatchedResNet18,), {"micro_batches": m}), lambda: None)
    results = {name: Result(name) for name in configs}
    started = time.perf_counter()
    try:
        names = list(configs)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                model, make_strategy = configs[name]
                timer, strategy = _fit(model, make_strategy(), args.warmup + per_fit, args.batch)
                res = results[name]
                res.times += timer.times[args.warmup :]
                res.traffic += timer.traffic[args.warmup :]
                if strategy is not None and strategy.plan is not None and not res.cut_rows:
                    res.cut_rows = [tuple(row) for row in strategy.plan.cut_rows()]
                print(
                    f"  round {r + 1} {name:<15} median {statistics.median(timer.times[args.warmup :]) * 1e3:8.1f} ms"
                )
    finally:
        server.stop()
    elapsed = time.perf_counter() - started
    server_step = _server_step_estimate(model_cls, cut)

    local = results["local"].median()
    header = (
        "config",
        "median ms",
        "p25-p75 ms",
        "/local",
        "up/step",
        "down/step",
        "remote ms",
        "server ms",
        "wire ms",
    )
    rows = []
    summary: dict[str, Any] = {}
    for name, res in results.items():
        med = res.median()
        q = statistics.quantiles(res.times, n=4) if len(res.times) >= 2 else [med, med, med]
        remote, compute = res.median("round_trip_s"), res.median("server_compute_s")
        wire = statistics.median(t["round_trip_s"] - t["server_compute_s"] for t in res.traffic) if res.traffic else 0
        summary[name] = {
            "median_step_s": med,
            "p25_step_s": q[0],
            "p75_step_s": q[2],
            "ratio_to_local": med / local,
            "bytes_up_per_step": res.median("bytes_up"),
            "bytes_down_per_step": res.median("bytes_down"),
            "requests_per_step": res.median("requests"),
            "remote_s_per_step": remote,
            "server_compute_s_per_step": compute,
            "wire_s_per_step": wire,
            "device_s_per_step": med - remote if res.traffic else med,
            "cut": [{"node": n, "shape": s, "bytes": b} for n, s, b in res.cut_rows],
            "step_times_s": res.times,
        }
        split = bool(res.traffic)
        rows.append(
            (
                name,
                f"{med * 1e3:.1f}",
                f"{q[0] * 1e3:.0f}-{q[2] * 1e3:.0f}",
                f"{med / local:.3f}",
                _kb(res.median("bytes_up")) if split else "-",
                _kb(res.median("bytes_down")) if split else "-",
                f"{remote * 1e3:.1f}" if split else "-",
                f"{compute * 1e3:.1f}" if split else "-",
                f"{wire * 1e3:.1f}" if split else "-",
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print()
    for row in (header, *rows):
        print("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))))
    for name, res in results.items():
        for node, shape, size in res.cut_rows:
            print(f"{name}: cut tensor {node} {shape} {_kb(size)}")
    serve_ratio = summary["split-serve"]["ratio_to_local"]
    verdict = "meets" if serve_ratio <= TARGET_RATIO else "misses"
    print(f"split-serve/local = {serve_ratio:.3f} ({verdict} the <= {TARGET_RATIO} target); {elapsed:.0f} s measuring")
    against_pieces = None
    if args.micro_batches > 1 and not args.no_embedded:
        m = args.micro_batches
        pipelined, pieces = summary[f"split-embedded-m{m}"], summary[f"local-m{m}"]
        against_pieces = pipelined["median_step_s"] / pieces["median_step_s"]
        print(
            f"split-embedded-m{m}/local = {pipelined['ratio_to_local']:.3f}; against local training of the same "
            f"{m} micro-batches (local-m{m}, {pieces['ratio_to_local']:.3f} of local): {against_pieces:.3f}"
        )
    print(
        "remote ms = time waiting on the server per step; server ms = its compute; wire = remote - server "
        "(serialization, websocket transfer, process switching)"
    )
    if server_step is not None:
        print(
            f"of wire: the server's deferred SGD step (outside server_compute_s) takes ~{server_step * 1e3:.1f} ms "
            "(timed here, 1 thread)"
        )

    report = {
        "benchmark": "runtime",
        "model": "torchvision resnet18(num_classes=10), weights=None",
        "input": [args.batch, 3, 32, 32],
        "optimizer": "SGD(lr=0.05, momentum=0.9)",
        "cut": cut,
        "rounds": args.rounds,
        "steps_per_fit": per_fit,
        "warmup_steps_per_fit": args.warmup,
        "threads": {"trainer": torch.get_num_threads(), "server_env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}},
        "server": {"url": url, "command": " ".join(["python", *server.command[1:]])},
        "target_ratio": TARGET_RATIO,
        "machine": _machine_info(),
        "elapsed_s": elapsed,
        "server_sgd_step_s_estimate": server_step,
        "pipelined_vs_local_micro_batches": against_pieces,
        "results": summary,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _machine_info() -> dict[str, Any]:
    """benchmarks/_common.py's machine record (imported lazily: the server imports this module too)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine_info

    return machine_info(("torch", "torchvision", "lightning", "websockets"))


if __name__ == "__main__":
    sys.exit(main())
