"""Noise floor: how much the same training step varies between fits on this machine, without the library.

The prediction benchmark compares each fit's median step with a prediction, at 15%. That can
only be as tight as the machine repeats itself. This script measures it with plain PyTorch (no
Lightning, no lightning-split): ``--fits`` times a fresh torchvision ResNet-18 (10 classes) is
trained for ``--steps`` steps of SGD with momentum on one synthetic CIFAR batch of 32, with one
torch thread, pinned to one CPU; each fit's median step (after ``--warmup``) is one row. Prints
a table and writes JSON (``benchmarks/out/noise.json``).

    python benchmarks/noise.py [--fits 8] [--steps 25] [--warmup 5] [--cpu 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import ROOT, machine_info, render_table
else:
    from benchmarks._common import ROOT, machine_info, render_table

import torch
import torchvision


def fit_median_s(steps: int, warmup: int, batch: int = 32) -> float:
    """Median seconds of one SGD step of a fresh ResNet-18, over the steps after ``warmup``."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[warmup:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fits", type=int, default=8, help="fresh models trained one after the other")
    parser.add_argument("--steps", type=int, default=25, help="steps per fit, warm-up included")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of every fit")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU this process is pinned to (-1: not pinned)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "noise.json")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    torch.set_num_threads(1)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    load_before = os.getloadavg()
    medians = [fit_median_s(args.steps, args.warmup) for _ in range(args.fits)]
    middle = statistics.median(medians)
    spread = (max(medians) - min(medians)) / middle
    rows = [(str(i + 1), f"{m * 1e3:.1f}", f"{m / middle:.3f}") for i, m in enumerate(medians)]
    print(render_table(("fit", "median step ms", "/ median of fits"), rows))
    print(
        f"{args.fits} fits of the same ResNet-18 step (plain PyTorch, 1 thread, CPU {args.cpu}): "
        f"{min(medians) * 1e3:.1f} to {max(medians) * 1e3:.1f} ms, a spread of {spread:.0%} of the middle one"
    )
    report = {
        "benchmark": "noise",
        "fits": args.fits,
        "steps": args.steps,
        "warmup": args.warmup,
        "cpu": args.cpu,
        "medians_s": medians,
        "spread": spread,
        "machine": machine_info(("torch", "torchvision")),
        "load_average": {"start": list(load_before), "end": list(os.getloadavg())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
