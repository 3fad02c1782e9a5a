"""Pipelining benchmark: step time with M micro-batches against M=1, same run, on an emulated link.

The models are built so that the device's compute and the link's time are comparable, the case
pipelining is for: a batch of 128 samples hands a 1 MiB float32 cut tensor to the server, which
runs a small head. Two device parts (``--model``):

- ``conv`` (default): 3x16x16 images through ``--device-layers`` + 1 3x3 convolutions of 32
  channels and a pooling, a 128 x 32 x 8 x 8 cut. Small weights, large activations: a
  micro-batch costs about its share of the batch's compute, so pipelining can pay.
- ``wide``: 2048-wide Linear+ReLU layers, a 128 x 2048 cut. Large weights (16 MiB a layer):
  on a CPU each micro-batch re-reads the weights and writes a whole weight gradient, so M
  micro-batches cost more device time than one batch (printed as ``device compute xM / x1``);
  pipelining then pays less or not at all.

The link is emulated by the client (``SplitStrategy(link=...)``, default ``100mbit,4ms``), so a
cut tensor takes about 84 ms each way, and the embedded server runs in this process. Every
configuration is fitted ``--rounds`` times, alternating, and each step is timed from
``on_train_batch_start`` to ``on_train_batch_end`` after ``--warmup`` steps. The same run
also times the device part alone (forward and backward of the whole batch against M
micro-batches), so the table says how much of the link time pipelining could hide.

Prints a table and writes JSON (``benchmarks/out/pipelining.json``): median step time per M
and its ratio to M=1. Timing figures live here, never in test assertions.

    python benchmarks/pipelining.py [--model conv|wide] [--link 100mbit,4ms] [--micro-batches 1,2,4,8]
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
CHANNELS = 32  # 128 x 32 x 8 x 8 float32 = 1 MiB crosses the cut


class _Net(L.LightningModule):
    """A ``body`` on the device (cut after it) and a ``head`` on the server, trained with SGD+momentum."""

    body: nn.Module
    head: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class WideNet(_Net):
    """``layers`` Linear(2048, 2048)+ReLU on the device (cut after ``body``), a small head on the server."""

    def __init__(self, layers: int = 2, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU())])
        self.head = nn.Sequential(nn.Linear(WIDTH, 256), nn.ReLU(), nn.Linear(256, 10))


class ConvNet(_Net):
    """3x3 convolutions of 32 channels on 16x16 images on the device (cut after ``body``), a linear head."""

    def __init__(self, layers: int = 2, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        convs = [nn.Conv2d(3, CHANNELS, 3, padding=1), nn.ReLU()]
        convs += [m for _ in range(layers - 1) for m in (nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU())]
        convs += [nn.MaxPool2d(2), nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*convs)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(CHANNELS * 8 * 8, 10))


MODELS = {"conv": (ConvNet, (3, 16, 16)), "wide": (WideNet, (WIDTH,))}


def device_compute_s(model_name: str, layers: int, micro_batches: int, repeats: int = 5) -> float:
    """Median seconds of the device part's forward and backward on one batch cut into ``micro_batches``."""
    cls, shape = MODELS[model_name]
    torch.manual_seed(0)
    body = cls(layers).body
    x = torch.randn(BATCH, *shape)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        outputs = [body(piece) for piece in x.tensor_split(micro_batches)]
        for out in reversed(outputs):
            out.backward(torch.ones_like(out))
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def fit_times(micro_batches: int, link: str | None, layers: int, steps: int, model_name: str = "conv") -> list[float]:
    from lightning_split import SplitStrategy

    cls, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = cls(layers)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(steps * BATCH, *shape, generator=generator)
    data = TensorDataset(inputs, torch.randint(0, 10, (steps * BATCH,)))
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
    parser.add_argument("--model", choices=sorted(MODELS), default="conv", help="the device part (see above)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
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
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    link = None if args.link == "unlimited" else args.link
    values = [int(m) for m in args.micro_batches.split(",")]
    times: dict[int, list[float]] = {m: [] for m in values}
    for round_index in range(args.rounds):
        order = values[round_index % len(values) :] + values[: round_index % len(values)]
        for m in order:
            times[m] += fit_times(m, link, args.device_layers, args.steps, args.model)[args.warmup :]
            print(f"  round {round_index + 1} M={m}: median {statistics.median(times[m]) * 1e3:.0f} ms", flush=True)
    base = statistics.median(times[values[0]])
    compute = {m: device_compute_s(args.model, args.device_layers, m) for m in values}
    rows = []
    results = {}
    for m in values:
        median = statistics.median(times[m])
        inflation = compute[m] / compute[values[0]]
        results[str(m)] = {
            "median_step_s": median,
            "ratio_to_first": median / base,
            "step_times_s": times[m],
            "device_compute_s": compute[m],
            "device_compute_ratio": inflation,
        }
        rows.append(
            [str(m), f"{median * 1e3:.0f}", f"{median / base:.2f}", f"{compute[m] * 1e3:.0f}", f"{inflation:.2f}"]
        )
    print(
        f"{MODELS[args.model][0].__name__}({args.device_layers} device layers), batch {BATCH}, 1 MiB cut, "
        f"link {args.link}, embedded server, {torch.get_num_threads()} torch threads"
    )
    headers = ["M", "median ms", f"/ M={values[0]}", "device fwd+bwd ms", f"device / M={values[0]}"]
    print(render_table(headers, rows))
    report = {
        "benchmark": "pipelining",
        "machine": machine_info(("torch", "lightning", "websockets")),
        "link": args.link,
        "batch": BATCH,
        "model": args.model,
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
