"""Planner benchmark: the exact methods ``full``, ``blockwise`` and ``exhaustive`` on real and synthetic graphs.

For each torchvision classification model (traced at batch 1, 224x224 or 299x299 for
Inception v3, costs estimated from FLOPs with the default device and server throughputs) and
for synthetic ResNet-like residual stacks of 1,000 to 10,000 nodes (built directly as
profiles, no torch), at uplink = downlink = 10, 100 and 1000 Mbit/s with a 2 ms rtt, it records:

- the node count and the number of boundary nodes blockwise decomposes at
  (:func:`~lightning_split.planning.planner.series_boundaries`; ``graph_boundaries`` counts those of the
  whole graph, which dead ends and constants in ViT and Swin reduce to almost none),
- the median solve time of ``full`` and ``blockwise`` and their ratio (the speed-up), and of
  ``exhaustive`` (brute force) where it finishes within ``EXHAUSTIVE_MAX_PLACEMENTS``,
- whether all reach the same optimal predicted step time ``T`` (they must: all are exact;
  the script exits 1 if they differ by more than 1e-9 relative, or if a plan is infeasible or
  worse than a baseline),
- ``T`` of the optimal plan against ``device_only``, ``server_only`` and ``best_layerwise``.

A growth series at 100 Mbit/s adds small residual stacks (18 to 508 nodes) and wide
parallel-branch graphs (6 to 26 nodes, where brute force grows exponentially) to show how each
method's solve time grows with the graph. It prints tables, writes JSON with the machine it ran
on and two charts next to it (``planner_growth.png``, ``planner_speedup.png``; a full run also
copies them to ``benchmarks/results``). Traced zoo profiles are cached in
``benchmarks/out/cache`` (keyed by model, torch/torchvision versions and the tracing sources),
so reruns skip the minute of tracing.

Usage::

    python benchmarks/planner.py [--quick] [--out benchmarks/out/planner.json] [--engine ENGINE]

``--engine`` picks the min-cut engine of ``full`` and of blockwise's large segments (small ones
always use augmenting paths), so blockwise's speed-up is measured against ``full`` on the same engine.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    machine_info,
    parallel_branches,
    render_table,
    residual_stack,
    time_adaptive,
    trace_sources,
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_split.planning.mincut import ALGORITHMS, DEFAULT, use_algorithm
from lightning_split.planning.planner import (
    Plan,
    PlanningError,
    baselines,
    boundaries,
    exhaustive,
    is_feasible,
    plan,
    series_boundaries,
)
from lightning_split.planning.profile import Link, Profile

LINKS_MBPS = (10.0, 100.0, 1000.0)
RTT_MS = 2.0
TOLERANCE = 1e-9  # relative difference of the two exact methods' optimal T that counts as disagreement
SYNTHETIC_NODES = (1_000, 2_500, 5_000, 10_000)
GROWTH_MBPS = 100.0
GROWTH_RESIDUAL_NODES = (18, 28, 48, 108, 208, 508)  # plus SYNTHETIC_NODES, from the main rows
GROWTH_BRANCHES = (2, 4, 6, 8, 10, 11, 12)  # parallel_branches(b): 2 + 2b nodes, 3**b placements
EXHAUSTIVE_MAX_NODES = 800  # its recursion is as deep as the graph
EXHAUSTIVE_MAX_PLACEMENTS = 600_000  # about 3 s of brute force on this kind of machine
RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_OUT = ROOT / "benchmarks" / "out" / "planner.json"
DEFAULT_CACHE = ROOT / "benchmarks" / "out" / "cache"


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
QUICK_GROWTH_RESIDUAL = (18, 48)
QUICK_GROWTH_BRANCHES = (2, 4)


# ----------------------------------------------------------------------------------------------
# Graphs.


def zoo_profile(model: ZooModel, cache_dir: Path | None) -> tuple[Profile, float | None]:
    """The estimated profile of a torchvision model, and the seconds tracing took (``None`` when cached)."""
    import torch
    import torchvision

    from lightning_split.costs.estimate import estimate_profile
    from lightning_split.graph.capture import trace_module

    sources = trace_sources()
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


# ----------------------------------------------------------------------------------------------
# Measurement.


def _exhaustive(profile: Profile) -> Plan:
    return exhaustive(profile, max_nodes=EXHAUSTIVE_MAX_NODES, max_placements=EXHAUSTIVE_MAX_PLACEMENTS)


def measure(
    name: str,
    kind: str,
    profile: Profile,
    link_mbps: float,
    budget_s: float,
    max_repeats: int,
    min_repeats: int,
    try_exhaustive: bool = True,
) -> dict[str, Any]:
    """Solve one graph over one link with the exact methods; times, agreement and baselines as a dict.

    ``exhaustive`` is tried when ``try_exhaustive`` and the graph is small enough; its entry is
    ``None`` when skipped and ``{"stopped": true}`` when it passed ``EXHAUSTIVE_MAX_PLACEMENTS``.
    """
    profile = profile.with_link(Link.from_mbps(link_mbps, rtt_ms=RTT_MS))
    timings = {
        method: time_adaptive(lambda method=method: plan(profile, method), budget_s, max_repeats, min_repeats)
        for method in ("full", "blockwise")
    }
    plans: dict[str, Plan] = {method: timing.result for method, timing in timings.items()}
    brute: dict[str, Any] | None = None
    if try_exhaustive and len(profile.nodes) <= EXHAUSTIVE_MAX_NODES:
        try:
            timing = time_adaptive(lambda: _exhaustive(profile), budget_s / 2, max(1, max_repeats // 4), 1, 0.5)
        except PlanningError:
            brute = {"stopped": True, "max_placements": EXHAUSTIVE_MAX_PLACEMENTS}
        else:
            brute = timing.to_json()
            plans["exhaustive"] = timing.result
    t_full, t_block = plans["full"].predicted_step_s, plans["blockwise"].predicted_step_s
    optima = [p.predicted_step_s for p in plans.values()]
    rel_diff = (max(optima) - min(optima)) / max(max(map(abs, optima)), 1e-300)
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
        "exhaustive": brute,
        "speedup": timings["full"].median_s / timings["blockwise"].median_s,
        "predicted_step_s": {method: result.predicted_step_s for method, result in plans.items()},
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


def _exhaustive_ms(row: dict[str, Any]) -> str:
    brute = row["exhaustive"]
    if brute is None:
        return "-"
    return "stopped" if brute.get("stopped") else _ms(brute["median_s"])


def _table(results: list[dict[str, Any]], graphs: dict[str, dict[str, Any]]) -> str:
    header = [
        "graph", "nodes", "bounds", "Mbit/s", "full ms", "block ms", "speed-up", "exh. ms", "agree",
        "T* ms", "device ms", "server ms", "layerwise ms", "saved", "on device",
    ]  # fmt: skip
    rows = []
    for r in results:
        b = r["baselines"]
        rows.append([
            r["graph"], str(r["nodes"]), str(graphs[r["graph"]]["boundaries"]), f"{r['link_mbps']:g}",
            _ms(r["full"]["median_s"]), _ms(r["blockwise"]["median_s"]), f"{r['speedup']:.1f}x", _exhaustive_ms(r),
            "yes" if r["agree"] else "NO", _ms(r["optimum_s"]), _ms(b["device_only"]), _ms(b["server_only"]),
            _ms(b["best_layerwise"]), f"{r['reduction_pct']['best_layerwise']:.1f}%", str(r["device_nodes"]),
        ])  # fmt: skip
    return render_table(header, rows)


def _growth_table(growth: list[dict[str, Any]]) -> str:
    header = ["graph", "nodes", "full ms", "blockwise ms", "exhaustive ms", "speed-up", "agree"]
    rows = [
        [
            r["graph"],
            str(r["nodes"]),
            _ms(r["full"]["median_s"]),
            _ms(r["blockwise"]["median_s"]),
            _exhaustive_ms(r),
            f"{r['speedup']:.1f}x",
            "yes" if r["agree"] else "NO",
        ]
        for r in growth
    ]
    return render_table(header, rows)


def _geomean(values: Sequence[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    zoo = [r for r in results if r["kind"] == "zoo"]
    by_graph: dict[str, dict[str, float]] = {}
    for r in results:
        by_graph.setdefault(r["graph"], {})[f"{r['link_mbps']:g}"] = r["speedup"]
    zoo_by_model = {name: _geomean(list(by_graph[name].values())) for name in dict.fromkeys(r["graph"] for r in zoo)}
    fastest = max(zoo, key=lambda r: r["speedup"], default=None)
    synthetic = [r for r in results if r["kind"] == "synthetic"]
    largest = max((r["nodes"] for r in synthetic), default=None)
    return {
        "speedup_by_graph": by_graph,
        "zoo_speedup_geomean": _geomean([r["speedup"] for r in zoo]),
        "zoo_speedup_geomean_by_model": zoo_by_model,
        "zoo_speedup_max": None
        if fastest is None
        else {
            "graph": fastest["graph"],
            "link_mbps": fastest["link_mbps"],
            "speedup": fastest["speedup"],
        },
        "zoo_speedup_min": min((r["speedup"] for r in zoo), default=None),
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


def _charts(results: list[dict[str, Any]], growth: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Two PNGs: solve time against node count (log-log) and the blockwise speed-up per zoo model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out_dir / "planner_growth.png", out_dir / "planner_speedup.png"]
    figure, axes = plt.subplots(figsize=(8, 4.8), dpi=100)
    styles = {"full": ("tab:red", "s"), "blockwise": ("tab:blue", "o"), "exhaustive": ("tab:gray", "^")}
    for family, line, label in (("residual", "-", "residual stack"), ("branches", "--", "parallel branches")):
        rows = [r for r in growth if r["family"] == family]
        for method, (color, marker) in styles.items():
            points = [(r["nodes"], r[method]["median_s"]) for r in rows if r[method] and "median_s" in r[method]]
            if points:
                xs, ys = zip(*points)
                axes.plot(xs, ys, line, color=color, marker=marker, markersize=4, label=f"{method}, {label}")
    zoo = [r for r in results if r["kind"] == "zoo" and r["link_mbps"] == GROWTH_MBPS]
    for method, (color, _) in styles.items():
        if method != "exhaustive" and zoo:
            xs = [r["nodes"] for r in zoo]
            axes.scatter(xs, [r[method]["median_s"] for r in zoo], color=color, marker="x", s=18, zorder=3)
    axes.scatter([], [], color="black", marker="x", s=18, label="torchvision zoo (full red, blockwise blue)")
    axes.set(xscale="log", yscale="log", xlabel="nodes", ylabel="median solve time (s)")
    axes.set_title(f"Planner solve time against graph size ({GROWTH_MBPS:g} Mbit/s, {RTT_MS:g} ms rtt)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(paths[0])
    plt.close(figure)

    zoo_rows = [r for r in results if r["kind"] == "zoo"]
    names = list(dict.fromkeys(r["graph"] for r in zoo_rows))
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    width = 0.8 / len(LINKS_MBPS)
    for i, mbps in enumerate(LINKS_MBPS):
        values = [
            next((r["speedup"] for r in zoo_rows if r["graph"] == n and r["link_mbps"] == mbps), 0) for n in names
        ]
        axes.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=f"{mbps:g} Mbit/s")
    axes.axhline(13.0, color="black", linestyle="--", linewidth=1, label="13x (published, other graphs and baseline)")
    axes.axhline(1.0, color="gray", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    axes.set_ylabel("full / blockwise solve time")
    axes.set_title("Blockwise speed-up over one full min cut, torchvision models")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(paths[1])
    plt.close(figure)
    return paths


def _progress(row: dict[str, Any]) -> None:
    print(
        f"  {row['graph']} {row['link_mbps']:g} Mbit/s: full {_ms(row['full']['median_s'])} ms, "
        f"blockwise {_ms(row['blockwise']['median_s'])} ms, exhaustive {_exhaustive_ms(row)}, agree={row['agree']}",
        file=sys.stderr,
        flush=True,
    )


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
    parser.add_argument("--engine", choices=ALGORITHMS, default=DEFAULT, help=f"min-cut engine (default: {DEFAULT})")
    args = parser.parse_args(argv)
    with use_algorithm(args.engine):
        return _run(parser, args)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The benchmark proper, under the engine ``args.engine``."""
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * EXHAUSTIVE_MAX_NODES))  # exhaustive recurses per node
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
        graphs[name]["boundaries"] = len(series_boundaries(profile))
        graphs[name]["graph_boundaries"] = len(boundaries(profile))
        stopped = None  # the number of feasible placements does not depend on the link: stop once
        for mbps in LINKS_MBPS:
            row = measure(name, kind, profile, mbps, budget, max_repeats, min_repeats, stopped is None)
            if row["exhaustive"] and row["exhaustive"].get("stopped"):
                stopped = row["exhaustive"]
            row["exhaustive"] = row["exhaustive"] or stopped
            results.append(row)
            _progress(row)

    growth_residual = QUICK_GROWTH_RESIDUAL if args.quick else GROWTH_RESIDUAL_NODES
    growth_branches = QUICK_GROWTH_BRANCHES if args.quick else GROWTH_BRANCHES
    growth = []
    growth_graphs = [("residual", f"residual_{n}", residual_stack(n)) for n in growth_residual]
    growth_graphs += [("branches", f"branches_{b}", parallel_branches(b)) for b in growth_branches]
    for family, name, profile in growth_graphs:
        row = measure(name, "growth", profile, GROWTH_MBPS, budget, max_repeats, min_repeats)
        growth.append({"family": family, **row})
        _progress(row)
    for row in results:  # the large stacks of the main table continue the residual series
        if row["kind"] == "synthetic" and row["link_mbps"] == GROWTH_MBPS:
            growth.append({"family": "residual", **row})

    checked = results + growth
    agreement = all(r["agree"] for r in checked)
    sound = all(r["feasible"] and r["not_worse_than_baselines"] for r in checked)
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
            "exhaustive_max_nodes": EXHAUSTIVE_MAX_NODES,
            "exhaustive_max_placements": EXHAUSTIVE_MAX_PLACEMENTS,
            "growth_mbps": GROWTH_MBPS,
            "engine": args.engine,
        },
        "agreement": agreement,
        "sound": sound,
        "total_s": total_s,
        "graphs": graphs,
        "results": results,
        "growth": growth,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    charts = _charts(results, growth, args.out.parent)
    report["charts"] = [str(path) for path in charts]
    if not args.quick:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        for path in charts:
            shutil.copyfile(path, RESULTS_DIR / path.name)
    args.out.write_text(json.dumps(report, indent=1) + "\n")

    print(_table(results, graphs))
    print("T*: predicted step time of the optimal plan; saved: its reduction against best_layerwise;")
    print("on device: nodes the optimal plan keeps on the device; bounds: boundary nodes blockwise splits at;")
    limits = f"'-' over {EXHAUSTIVE_MAX_NODES} nodes, 'stopped' over {EXHAUSTIVE_MAX_PLACEMENTS} placements"
    print(f"exh.: exhaustive solve time, {limits}")
    print()
    print(f"growth at {GROWTH_MBPS:g} Mbit/s:")
    print(_growth_table(growth))
    print()
    if summary["zoo_speedup_geomean"] is not None:
        top = summary["zoo_speedup_max"]
        print(
            f"zoo: blockwise is {summary['zoo_speedup_geomean']:.1f}x faster than full (geometric mean), "
            f"{summary['zoo_speedup_min']:.1f}x to {top['speedup']:.1f}x "
            f"({top['graph']} at {top['link_mbps']:g} Mbit/s)"
        )
    largest = summary["largest_synthetic"]
    if largest["nodes"] is not None:
        ratios = ", ".join(f"{v:.0f}x at {k} Mbit/s" for k, v in largest["speedup_by_link"].items())
        print(f"largest synthetic graph ({largest['nodes']} nodes): blockwise speed-up {ratios}")
    print(f"optimal T agrees within {TOLERANCE:g} relative: {'yes' if agreement else 'NO'}")
    print(f"total {total_s:.0f} s; results in {args.out}; charts: {', '.join(str(path) for path in charts)}")
    if not agreement:
        bad = [f"{r['graph']}@{r['link_mbps']:g}" for r in checked if not r["agree"]]
        print(f"error: full and blockwise disagree on {', '.join(bad)}", file=sys.stderr)
    if not sound:
        print("error: a plan is infeasible or worse than a baseline", file=sys.stderr)
    return 0 if agreement and sound else 1


if __name__ == "__main__":
    sys.exit(main())
