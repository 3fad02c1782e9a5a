"""Helpers shared by the benchmark scripts: machine description, adaptive timing, plain-text tables.

Benchmarks run on shared, noisy machines, so every timing is the median of several runs, and
every result file says what it ran on.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def machine_info(packages: Sequence[str] = ("torch", "torchvision", "networkx", "lightning")) -> dict[str, Any]:
    """Platform, CPU count, Python and package versions, git commit and a UTC timestamp."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        **versions,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


@dataclass
class Timing(Generic[T]):
    """Wall-clock seconds of repeated calls: every run, their median, and the last call's result."""

    runs_s: list[float]
    result: T

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    def to_json(self) -> dict[str, Any]:
        return {"median_s": self.median_s, "repeats": len(self.runs_s), "runs_s": self.runs_s}


def time_adaptive(
    fn: Callable[[], T], budget_s: float, max_repeats: int, min_repeats: int = 3, long_s: float = 3.0
) -> Timing[T]:
    """Time ``fn()`` repeatedly: as many runs as fit in ``budget_s``, between ``min_repeats`` and ``max_repeats``.

    A first run longer than ``long_s`` is not repeated at all, so the largest cases cost one run
    while fast ones get a stable median. The garbage collector runs before each call so that
    one run does not pay for another's garbage; call :func:`gc.freeze` after setting up large
    data so that these collections stay cheap.
    """
    runs: list[float] = []
    result = _timed(fn, runs)
    first = runs[0]
    if first > long_s:
        return Timing(runs, result)
    wanted = max(min_repeats, min(max_repeats, int(budget_s / max(first, 1e-9))))
    while len(runs) < wanted:
        result = _timed(fn, runs)
    return Timing(runs, result)


def _timed(fn: Callable[[], T], runs: list[float]) -> T:
    gc.collect()
    started = time.perf_counter()
    result = fn()
    runs.append(time.perf_counter() - started)
    return result


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
