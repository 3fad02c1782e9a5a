"""Planner benchmark: the two exact methods, ``full`` and ``blockwise``, on real and synthetic graphs.

For each torchvision classification model (traced at batch 1, 224x224 or 299x299 for
Inception v3, costs estimated from FLOPs with the default device and server throughputs) and
for synthetic ResNet-like residual stacks of 1,000 to 10,000 nodes (built directly as
profiles, no torch), at uplink = downlink = 10, 100 and 1000 Mbit/s with a 2 ms rtt, it records:

- the node count and the number of boundary nodes (what ``blockwise`` decomposes at),
- the median solve time of ``full`` and ``blockwise`` and their ratio (the speed-up),
- whether both reach the same optimal predicted step time ``T`` (they must: both are exact;
  the script exits 1 if they differ by more than 1e-9 relative, or if a plan is infeasible or
  worse than a baseline),
- ``T`` of the optimal plan against ``device_only``, ``server_only`` and ``best_layerwise``.

It prints a table and writes JSON with the machine it ran on. Traced zoo profiles are cached
in ``benchmarks/out/cache`` (keyed by model, torch/torchvision versions and the tracing
sources), so reruns skip the minute of tracing.

Usage::

    python benchmarks/planner.py [--quick] [--out benchmarks/out/planner.json]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import ROOT, machine_info, render_table, time_adaptive

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_split.planner import Plan, baselines, boundaries, is_feasible, plan
from lightning_split.profile import Link, NodeCost, Profile

LINKS_MBPS = (10.0, 100.0, 1000.0)
RTT_MS = 2.0
TOLERANCE = 1e-9  # relative difference of the two exact methods' optimal T that counts as disagreement
SYNTHETIC_NODES = (1_000, 2_500, 5_000, 10_000)
DEFAULT_OUT = ROOT / "benchmarks" / "out" / "planner.json"
DEFAULT_CACHE = ROOT / "benchmarks" / "out" / "cache"
# The sources whose changes can change a traced profile: part of the cache key.
_TRACE_SOURCES = ("trace.py", "estimate.py", "profile.py")


@dataclass(frozen=True)
class ZooModel:
    """A torchvision classification model: its builder name, keyword arguments and input side."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    side: int = 224

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.side, self.side)


ZOO = (
    ZooModel("resnet18"),
    ZooModel("resnet50"),
    ZooModel("resnet152"),
    ZooModel("densenet121"),
    ZooModel("densenet201"),
    ZooModel("googlenet", {"aux_logits": False, "init_weights": False}),
    ZooModel("inception_v3", {"aux_logits": False, "init_weights": False}, side=299),
    ZooModel("mobilenet_v2"),
    ZooModel("mobilenet_v3_large"),
    ZooModel("efficientnet_b0"),
    ZooModel("convnext_tiny"),
    ZooModel("regnet_y_400mf"),
    ZooModel("vit_b_16"),
    ZooModel("swin_t"),
)
QUICK_ZOO = ("resnet18",)
QUICK_NODES = (1_000,)


# ----------------------------------------------------------------------------------------------
# Graphs.


def zoo_profile(model: ZooModel, cache_dir: Path | None) -> tuple[Profile, float | None]:
    """The estimated profile of a torchvision model, and the seconds tracing took (``None`` when cached)."""
    import torch
    import torchvision

    from lightning_split.estimate import estimate_profile
    from lightning_split.trace import trace_module

    sources = b"".join((ROOT / "lightning_split" / name).read_bytes() for name in _TRACE_SOURCES)
    key = json.dumps([model.name, model.kwargs, model.side, torch.__version__, torchvision.__version__])
    digest = hashlib.sha256(key.encode() + sources).hexdigest()[:16]
    cached = cache_dir / f"{model.name}-{digest}.json" if cache_dir is not None else None
    if cached is not None and cached.exists():
        return Profile.load(cached), None

    started = time.perf_counter()
    torch.manual_seed(0)  # weights do not change FLOPs or shapes; seeded only to make reruns identical
    module = torchvision.models.get_model(model.name, weights=None, **model.kwargs)
    example = torch.randn(model.input_shape, generator=torch.Generator().manual_seed(0))
    profile = estimate_profile(trace_module(module, (example,)), Link.from_mbps(100.0, rtt_ms=RTT_MS))
    profile.extra["model"] = f"torchvision.models.{model.name}"
    traced_s = time.perf_counter() - started
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        profile.save(cached)
    return profile, traced_s


def residual_stack(nodes: int, seed: int = 0) -> Profile:
    """A ResNet-like profile of exactly ``nodes`` nodes (at least 18), built without torch.

    Stem (input, conv, bn, relu, maxpool), bottleneck blocks of 10 nodes (three conv/bn pairs,
    two relus, the residual add joining the block input, a relu), head (avgpool, flatten, a few
    linear layers to reach the exact count, fc). The whole model costs about 1.3 s on the
    device, the server is 10-50x faster per node, the input is a 224x224 RGB image and
    activations shrink from 3 MB to a few KB with depth, so the best cut moves with the link.
    The same family as ``residual_stack`` in ``tests/test_planner.py``.
    """
    if nodes < 18:
        raise ValueError(f"a residual stack needs at least 18 nodes, got {nodes}")
    rng = random.Random(seed)
    blocks, padding = divmod(nodes - 8, 10)
    profile_nodes = [NodeCost("x", "input", (), 3 * 224 * 224 * 4, 0.0, 0.0)]

    def add(name: str, inputs: Sequence[str], depth: float) -> str:
        device_s = rng.uniform(1e-4, 5e-3) * 50 / blocks
        out_bytes = int(3_000_000 * 0.5 ** (6 * depth) * rng.uniform(0.5, 2.0)) + 1000
        profile_nodes.append(NodeCost(name, "op", tuple(inputs), out_bytes, device_s, device_s / rng.uniform(10, 50)))
        return name

    h = add("maxpool", [add("relu", [add("bn1", [add("conv1", ["x"], 0.0)], 0.0)], 0.0)], 0.0)
    for b in range(blocks):
        depth = (b + 1) / blocks
        t = h
        for i in (1, 2, 3):
            t = add(f"b{b}_bn{i}", [add(f"b{b}_conv{i}", [t], depth)], depth)
            if i < 3:
                t = add(f"b{b}_relu{i}", [t], depth)
        h = add(f"b{b}_relu", [add(f"b{b}_add", [t, h], depth)], depth)
    h = add("flatten", [add("avgpool", [h], 1.0)], 1.0)
    for i in range(padding):
        h = add(f"linear{i}", [h], 1.0)
    add("fc", [h], 1.0)
    return Profile(profile_nodes, ["fc"], Link.from_mbps(100.0, rtt_ms=RTT_MS), {"model": f"residual_stack({nodes})"})


# ----------------------------------------------------------------------------------------------
# Measurement.


def measure(
    name: str, kind: str, profile: Profile, link_mbps: float, budget_s: float, max_repeats: int, min_repeats: int
) -> dict[str, Any]:
    """Solve one graph over one link with both exact methods; times, agreement and baselines as a dict."""
    profile = profile.with_link(Link.from_mbps(link_mbps, rtt_ms=RTT_MS))
    timings = {
        method: time_adaptive(lambda method=method: plan(profile, method), budget_s, max_repeats, min_repeats)
        for method in ("full", "blockwise")
    }
    plans: dict[str, Plan] = {method: timing.result for method, timing in timings.items()}
    t_full, t_block = plans["full"].predicted_step_s, plans["blockwise"].predicted_step_s
    rel_diff = abs(t_full - t_block) / max(abs(t_full), abs(t_block), 1e-300)
    against = baselines(profile)
    optimum = min(t_full, t_block)
    best_plan = plans["blockwise"]
    return {
        "graph": name,
        "kind": kind,
        "nodes": len(profile.nodes),
        "link_mbps": link_mbps,
        "rtt_ms": RTT_MS,
        "full": timings["full"].to_json(),
        "blockwise": timings["blockwise"].to_json(),
        "speedup": timings["full"].median_s / timings["blockwise"].median_s,
        "predicted_step_s": {"full": t_full, "blockwise": t_block},
        "rel_diff": rel_diff,
        "agree": rel_diff <= TOLERANCE,
        "feasible": all(is_feasible(profile, p.device) for p in plans.values()),
        "optimum_s": optimum,
        "baselines": against,
        "reduction_pct": {key: 100.0 * (value - optimum) / value if value else 0.0 for key, value in against.items()},
        "not_worse_than_baselines": optimum <= min(against.values()) * (1 + TOLERANCE),
        "device_nodes": len(best_plan.device),
        "cut": list(best_plan.cut),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.1 else f"{seconds * 1e3:.1f}"


def _table(results: list[dict[str, Any]], graphs: dict[str, dict[str, Any]]) -> str:
    header = [
        "graph", "nodes", "bounds", "Mbit/s", "full ms", "block ms", "speed-up", "agree",
        "T* ms", "device ms", "server ms", "layerwise ms", "saved", "on device",
    ]  # fmt: skip
    rows = []
    for r in results:
        b = r["baselines"]
        rows.append([
            r["graph"], str(r["nodes"]), str(graphs[r["graph"]]["boundaries"]), f"{r['link_mbps']:g}",
            _ms(r["full"]["median_s"]), _ms(r["blockwise"]["median_s"]), f"{r['speedup']:.1f}x",
            "yes" if r["agree"] else "NO", _ms(r["optimum_s"]), _ms(b["device_only"]), _ms(b["server_only"]),
            _ms(b["best_layerwise"]), f"{r['reduction_pct']['best_layerwise']:.1f}%", str(r["device_nodes"]),
        ])  # fmt: skip
    return render_table(header, rows)


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    zoo = [r["speedup"] for r in results if r["kind"] == "zoo"]
    by_graph: dict[str, dict[str, float]] = {}
    for r in results:
        by_graph.setdefault(r["graph"], {})[f"{r['link_mbps']:g}"] = r["speedup"]
    synthetic = [r for r in results if r["kind"] == "synthetic"]
    largest = max((r["nodes"] for r in synthetic), default=None)
    return {
        "speedup_by_graph": by_graph,
        "zoo_speedup_geomean": math.exp(sum(map(math.log, zoo)) / len(zoo)) if zoo else None,
        "largest_synthetic": {
            "nodes": largest,
            "speedup_by_link": {f"{r['link_mbps']:g}": r["speedup"] for r in synthetic if r["nodes"] == largest},
            "full_median_s": {f"{r['link_mbps']:g}": r["full"]["median_s"] for r in synthetic if r["nodes"] == largest},
            "blockwise_median_s": {
                f"{r['link_mbps']:g}": r["blockwise"]["median_s"] for r in synthetic if r["nodes"] == largest
            },
        },
        "max_rel_diff": max((r["rel_diff"] for r in results), default=0.0),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when the exact methods disagree or a plan is infeasible."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small subset (resnet18, 1,000 nodes) for CI smoke runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where traced zoo profiles are cached")
    parser.add_argument("--no-cache", action="store_true", help="trace every zoo model again")
    parser.add_argument("--models", help="comma-separated zoo models to run (default: all; 'none' for none)")
    parser.add_argument("--nodes", help="comma-separated synthetic sizes (default: 1000,2500,5000,10000)")
    parser.add_argument("--budget", type=float, help="seconds of repeats per measurement (default: 2; quick: 0.1)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    names = QUICK_ZOO if args.quick else tuple(m.name for m in ZOO)
    if args.models:
        names = () if args.models == "none" else tuple(args.models.split(","))
    unknown = set(names) - {m.name for m in ZOO}
    if unknown:
        parser.error(f"unknown zoo model(s): {', '.join(sorted(unknown))}")
    sizes = QUICK_NODES if args.quick else SYNTHETIC_NODES
    if args.nodes:
        sizes = tuple(int(size) for size in args.nodes.split(","))
    budget = args.budget if args.budget is not None else (0.1 if args.quick else 2.0)
    max_repeats, min_repeats = (3, 1) if args.quick else (21, 3)

    graphs: dict[str, dict[str, Any]] = {}
    profiles: list[tuple[str, str, Profile]] = []
    for model in (m for m in ZOO if m.name in names):
        print(f"tracing {model.name} ...", file=sys.stderr, flush=True)
        profile, traced_s = zoo_profile(model, None if args.no_cache else args.cache)
        profiles.append((model.name, "zoo", profile))
        graphs[model.name] = {"kind": "zoo", "input_shape": list(model.input_shape), "trace_s": traced_s}
    for size in sizes:
        name = f"residual_{size}"
        profiles.append((name, "synthetic", residual_stack(size)))
        graphs[name] = {"kind": "synthetic"}

    # The collector runs before every timed call; freezing what exists now (torch, traced
    # profiles) keeps each of those collections to the previous call's garbage.
    gc.collect()
    gc.freeze()
    results = []
    for name, kind, profile in profiles:
        graphs[name].update(nodes=len(profile.nodes), edges=sum(len(set(n.inputs)) for n in profile.nodes))
        graphs[name]["boundaries"] = len(boundaries(profile))
        for mbps in LINKS_MBPS:
            row = measure(name, kind, profile, mbps, budget, max_repeats, min_repeats)
            results.append(row)
            print(
                f"  {name} {mbps:g} Mbit/s: full {_ms(row['full']['median_s'])} ms, "
                f"blockwise {_ms(row['blockwise']['median_s'])} ms, agree={row['agree']}",
                file=sys.stderr,
                flush=True,
            )

    agreement = all(r["agree"] for r in results)
    sound = all(r["feasible"] and r["not_worse_than_baselines"] for r in results)
    total_s = time.perf_counter() - started
    summary = _summary(results)
    report = {
        "benchmark": "planner",
        "quick": args.quick,
        "machine": machine_info(),
        "settings": {
            "links_mbps": list(LINKS_MBPS),
            "rtt_ms": RTT_MS,
            "tolerance_rel": TOLERANCE,
            "budget_s": budget,
            "max_repeats": max_repeats,
            "min_repeats": min_repeats,
        },
        "agreement": agreement,
        "sound": sound,
        "total_s": total_s,
        "graphs": graphs,
        "results": results,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")

    print(_table(results, graphs))
    print("T*: predicted step time of the optimal plan; saved: its reduction against best_layerwise;")
    print("on device: nodes the optimal plan keeps on the device; bounds: boundary nodes blockwise splits at")
    print()
    if summary["zoo_speedup_geomean"] is not None:
        print(f"zoo: blockwise is {summary['zoo_speedup_geomean']:.1f}x faster than full (geometric mean)")
    largest = summary["largest_synthetic"]
    if largest["nodes"] is not None:
        ratios = ", ".join(f"{v:.0f}x at {k} Mbit/s" for k, v in largest["speedup_by_link"].items())
        print(f"largest synthetic graph ({largest['nodes']} nodes): blockwise speed-up {ratios}")
    print(f"optimal T agrees within {TOLERANCE:g} relative: {'yes' if agreement else 'NO'}")
    print(f"total {total_s:.0f} s; results in {args.out}")
    if not agreement:
        bad = [f"{r['graph']}@{r['link_mbps']:g}" for r in results if not r["agree"]]
        print(f"error: full and blockwise disagree on {', '.join(bad)}", file=sys.stderr)
    if not sound:
        print("error: a plan is infeasible or worse than a baseline", file=sys.stderr)
    return 0 if agreement and sound else 1


if __name__ == "__main__":
    sys.exit(main())
