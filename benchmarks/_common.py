"""Helpers shared by the benchmark scripts: machine description, adaptive timing, plain-text tables.

Benchmarks run on shared, noisy machines, so every timing is the median of several runs, and
every result file says what it ran on.
"""

from __future__ import annotations

import gc
import os
import platform
import random
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
# The package sources whose changes can change a traced, estimated profile: part of cache keys.
TRACE_SOURCES = ("graph", "costs/estimate.py", "planning/profile.py")


def trace_sources() -> bytes:
    """The bytes of :data:`TRACE_SOURCES` (every ``.py`` of a folder, in name order), for cache keys."""
    package = ROOT / "lightning_split"
    paths: list[Path] = []
    for name in TRACE_SOURCES:
        path = package / name
        paths.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return b"".join(p.read_bytes() for p in paths)


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


def residual_stack(nodes: int, seed: int = 0, link: Any = None, side_nodes: bool = False) -> Any:
    """A ResNet-like :class:`~lightning_split.planning.profile.Profile` of exactly ``nodes`` nodes, built without torch.

    Stem (input, conv, bn, relu, maxpool), bottleneck blocks of 10 nodes (three conv/bn pairs,
    two relus, the residual add joining the block input, a relu), head (avgpool, flatten, a few
    linear layers to reach the exact count, fc). The whole model costs about 1.3 s on the
    device, the server is 10-50x faster per node, the input is a 224x224 RGB image and
    activations shrink from 3 MB to a few KB with depth, so the best cut moves with the link.

    ``side_nodes`` adds, per block, what ViT and Swin graphs hold besides the main path: a
    constant computed without inputs and fed to the second conv (Swin's relative position
    bias), a shape check ``dim -> eq -> _assert`` on the block input and an unused tensor
    (ViT's attention weights). Blocks then have 15 nodes. Used by the planner benchmark and
    the planner tests (default link: 100 Mbit/s up and down, 2 ms rtt).
    """
    from lightning_split.planning.profile import Link, NodeCost, Profile

    stem_and_head = 8
    block_size = 15 if side_nodes else 10
    if nodes < stem_and_head + block_size:
        raise ValueError(f"a residual stack needs at least {stem_and_head + block_size} nodes, got {nodes}")
    rng = random.Random(seed)
    blocks, padding = divmod(nodes - stem_and_head, block_size)
    profile_nodes = [NodeCost("x", "input", (), 3 * 224 * 224 * 4, 0.0, 0.0)]

    def add(name: str, inputs: Sequence[str], depth: float, scale: float = 1.0) -> str:
        device_s = rng.uniform(1e-4, 5e-3) * 50 / blocks * scale
        out_bytes = int(3_000_000 * 0.5 ** (6 * depth) * rng.uniform(0.5, 2.0) * scale) + 1000
        profile_nodes.append(NodeCost(name, "op", tuple(inputs), out_bytes, device_s, device_s / rng.uniform(10, 50)))
        return name

    h = add("maxpool", [add("relu", [add("bn1", [add("conv1", ["x"], 0.0)], 0.0)], 0.0)], 0.0)
    for b in range(blocks):
        depth = (b + 1) / blocks
        if side_nodes:
            add(f"b{b}_assert", [add(f"b{b}_eq", [add(f"b{b}_dim", [h], depth, 0.01)], depth, 0.01)], depth, 0.01)
            bias = add(f"b{b}_bias", [], depth, 0.1)
        t = h
        for i in (1, 2, 3):
            conv_inputs = [t, bias] if side_nodes and i == 2 else [t]
            t = add(f"b{b}_bn{i}", [add(f"b{b}_conv{i}", conv_inputs, depth)], depth)
            if i < 3:
                t = add(f"b{b}_relu{i}", [t], depth)
            if side_nodes and i == 2:
                add(f"b{b}_unused", [f"b{b}_conv2"], depth, 0.1)
        h = add(f"b{b}_relu", [add(f"b{b}_add", [t, h], depth)], depth)
    h = add("flatten", [add("avgpool", [h], 1.0)], 1.0)
    for i in range(padding):
        h = add(f"linear{i}", [h], 1.0)
    add("fc", [h], 1.0)
    link = link or Link.from_mbps(100.0, rtt_ms=2.0)
    kind = "residual_stack_side" if side_nodes else "residual_stack"
    return Profile(profile_nodes, ["fc"], link, {"model": f"{kind}({nodes})"})


def parallel_branches(branches: int, length: int = 2, seed: int = 0, link: Any = None) -> Any:
    """A wide profile: the input feeds ``branches`` parallel chains of ``length`` nodes joined by one node.

    It has ``2 + branches * length`` nodes and ``(length + 1) ** branches`` feasible placements of
    the branches, so brute force grows exponentially with its size while a min cut does not;
    its only boundaries are the input, the join and the head, so blockwise cannot split it.
    """
    from lightning_split.planning.profile import Link, NodeCost, Profile

    rng = random.Random(seed)
    nodes = [NodeCost("x", "input", (), 602_112, 0.0, 0.0)]
    ends = []
    for b in range(branches):
        previous = "x"
        for i in range(length):
            device_s = rng.uniform(1e-3, 2e-2)
            name = f"br{b}_{i}"
            out_bytes = int(rng.uniform(0.2, 2.0) * 1_000_000 * 0.3**i)
            nodes.append(NodeCost(name, "op", (previous,), out_bytes, device_s, device_s / rng.uniform(10, 50)))
            previous = name
        ends.append(previous)
    nodes.append(NodeCost("join", "op", tuple(ends), 40_000, 1e-3, 1e-4))
    link = link or Link.from_mbps(100.0, rtt_ms=2.0)
    return Profile(nodes, ["join"], link, {"model": f"parallel_branches({branches}x{length})"})


class ServeProcess:
    """A ``python -m lightning_split.cli serve`` child on 127.0.0.1; stderr goes to ``log_path``.

    ``url`` is what the server printed it listens on; ``serve_args`` are extra ``serve`` flags
    and ``extra_env`` extra environment variables (the repository root is put on ``PYTHONPATH``
    so the server can import the benchmark's model class). ``cpus``: the CPU numbers the server
    may run on (``None``: any), so device and server can each have cores of their own.
    """

    def __init__(
        self,
        model_path: str,
        log_path: Path,
        *serve_args: str,
        extra_env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        import threading

        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": pythonpath, **(extra_env or {})}
        self.log_path = log_path
        self.command = [
            sys.executable, "-m", "lightning_split.cli", "serve", "--model", model_path,
            "--host", "127.0.0.1", "--port", "0", *serve_args,
        ]  # fmt: skip
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True, preexec_fn=pin
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"server did not start: {line!r}; {log_path.read_text()[-2000:]}")
        self.url = line.split("listening on ", 1)[1].strip()
        # keep reading stdout so a chatty server never blocks on a full pipe
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
