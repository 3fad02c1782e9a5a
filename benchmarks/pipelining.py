"""Pipelining benchmark: step time with M micro-batches against M=1, same run, on an emulated link.

The model is built so that the device's compute and the link's time are comparable, the case
pipelining is for: a batch of 128 feature vectors; the device runs ``--device-layers`` wide
Linear+ReLU layers and hands a 128 x 2048 float32 tensor (1 MiB) to the server, which runs a
small head. The link is emulated by the client (``SplitStrategy(link=...)``, default
``100mbit,4ms``), so a cut tensor takes about 84 ms each way, and the embedded server runs in
this process. Every configuration is fitted ``--rounds`` times, alternating, and each step is
timed from ``on_train_batch_start`` to ``on_train_batch_end`` after ``--warmup`` steps.

Prints a table and writes JSON (``benchmarks/out/pipelining.json``): median step time per M
and its ratio to M=1. Timing figures live here, never in test assertions.

    python benchmarks/pipelining.py [--link 100mbit,4ms] [--micro-batches 1,2,4,8] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import ROOT, machine_info, render_table

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
else:
    from benchmarks._common import ROOT, machine_info, render_table

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH = 128
WIDTH = 2048  # 128 x 2048 float32 = 1 MiB crosses the cut


class WideNet(L.LightningModule):
    """``layers`` Linear(2048, 2048)+ReLU on the device (cut after ``body``), a small head on the server."""

    def __init__(self, layers: int = 2, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU())])
        self.head = nn.Sequential(nn.Linear(WIDTH, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def fit_times(micro_batches: int, link: str | None, layers: int, steps: int) -> list[float]:
    from lightning_split import SplitStrategy

    torch.manual_seed(0)
    model = WideNet(layers)
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(steps * BATCH, WIDTH, generator=generator), torch.randint(0, 10, (steps * BATCH,)))
    timer = StepTimer()
    strategy = SplitStrategy(cut="body", micro_batches=micro_batches, link=link)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        strategy=strategy,
    )
    trainer.fit(model, DataLoader(data, batch_size=BATCH))
    return timer.times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--link", default="100mbit,4ms", help="emulated link ('unlimited' for plain loopback)")
    parser.add_argument("--micro-batches", default="1,2,4,8", help="comma-separated values of M")
    parser.add_argument("--device-layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="steps per fit, warm-up included")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "pipelining.json")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_split"):
        logging.getLogger(name).setLevel(logging.ERROR)
    link = None if args.link == "unlimited" else args.link
    values = [int(m) for m in args.micro_batches.split(",")]
    times: dict[int, list[float]] = {m: [] for m in values}
    for round_index in range(args.rounds):
        order = values[round_index % len(values) :] + values[: round_index % len(values)]
        for m in order:
            times[m] += fit_times(m, link, args.device_layers, args.steps)[args.warmup :]
            print(f"  round {round_index + 1} M={m}: median {statistics.median(times[m]) * 1e3:.0f} ms", flush=True)
    base = statistics.median(times[values[0]])
    rows = []
    results = {}
    for m in values:
        median = statistics.median(times[m])
        results[str(m)] = {"median_step_s": median, "ratio_to_first": median / base, "step_times_s": times[m]}
        rows.append([str(m), f"{median * 1e3:.0f}", f"{median / base:.2f}"])
    print(f"WideNet({args.device_layers} device layers), batch {BATCH}, 1 MiB cut, link {args.link}, embedded server")
    print(render_table(["M", "median ms", f"/ M={values[0]}"], rows))
    report = {
        "benchmark": "pipelining",
        "machine": machine_info(("torch", "lightning", "websockets")),
        "link": args.link,
        "batch": BATCH,
        "cut_bytes": BATCH * WIDTH * 4,
        "device_layers": args.device_layers,
        "torch_threads": torch.get_num_threads(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
