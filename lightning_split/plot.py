"""A picture of a plan: the placed graph and the predicted step time against bandwidth.

:func:`plot_plan` writes one figure (PNG or SVG, by the file's suffix) with two panels:

1. the graph, top-down by topological depth, device nodes and server nodes in two colours,
   the tensors that cross the cut highlighted and labeled with their size, model outputs
   marked. A graph of more than ``max_nodes`` nodes is condensed: one box per block between
   the nodes blockwise planning splits at (:func:`lightning_split.planning.planner.series_boundaries`),
   split in two where the cut runs through it, labeled with its node count and first and last
   node.
2. the predicted step time of the optimal plan and of the three baselines over a sweep of
   uplink bandwidths (log axes), with the bandwidths where the optimal cut changes marked and
   labeled with the new cut, and the profile's own bandwidth marked.

The data behind each panel is computed by plain, matplotlib-free functions so it can be
checked on its own: :func:`graph_view` (what boxes and edges are drawn) and :func:`sweep`
(the curves and the cut changes, each change located by bisection to within ``tolerance``).
matplotlib is imported only by :func:`plot_plan`; it is the ``plot`` extra
(``pip install 'lightning-split[plot]'``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_split.planning.planner import Plan, plan, series_boundaries
from lightning_split.planning.planner import baselines as planned_baselines
from lightning_split.planning.profile import Link, Profile
from lightning_split.planning.resources import Resources, resources
from lightning_split.planning.units import bytes_per_s, format_bytes, mbit_per_s

__all__ = [
    "BASELINES",
    "Box",
    "CutChange",
    "Edge",
    "GraphView",
    "PlotError",
    "Sweep",
    "cut_label",
    "default_bandwidths",
    "graph_view",
    "plot_plan",
    "scaled_link",
    "sweep",
]

BASELINES = ("device_only", "server_only", "best_layerwise")
SUFFIXES = (".png", ".svg")
DEVICE_COLOR = "#9ecae1"
SERVER_COLOR = "#fdae6b"
CUT_COLOR = "#d62728"
_EXACT_METHODS = ("blockwise", "full")
_SWEEP_HEIGHT = 8.0  # inches
_BASELINE_STYLE = {
    "device_only": ("device only", "#1f77b4", "--"),
    "server_only": ("server only", "#ff7f0e", "--"),
    "best_layerwise": ("best layerwise", "#2ca02c", ":"),
}


class PlotError(RuntimeError):
    """The figure cannot be drawn: matplotlib is missing or the file suffix is not supported."""


# ----------------------------------------------------------------------------------------------
# Panel 1: the graph (or its blocks) as boxes and edges.


@dataclass(frozen=True)
class Box:
    """One drawn vertex: a single node, or a run of nodes of one block on one side.

    Attributes:
        label: the text in the box (the node name, or the block's node count, first and last node).
        side: ``"device"`` or ``"server"``.
        nodes: the profile nodes it stands for, in graph order.
        output: whether it holds a model output.
    """

    label: str
    side: str
    nodes: tuple[str, ...]
    output: bool


@dataclass(frozen=True)
class Edge:
    """Data flowing from box ``source`` to box ``target`` (indices into :attr:`GraphView.boxes`).

    Attributes:
        crossing: the edge runs from the device to the server (its tensors cross the cut).
        tensors: the nodes whose outputs flow along it, each counted once.
        out_bytes: the bytes of those tensors for one batch.
    """

    source: int
    target: int
    crossing: bool
    tensors: tuple[str, ...]
    out_bytes: int


@dataclass(frozen=True)
class GraphView:
    """What the graph panel draws.

    Attributes:
        boxes: the drawn vertices, in graph order of their first node.
        edges: the drawn edges between them.
        condensed: whether boxes stand for blocks rather than single nodes.
        layers: each box's topological depth (longest path from a box without inputs).
    """

    boxes: tuple[Box, ...]
    edges: tuple[Edge, ...]
    condensed: bool
    layers: tuple[int, ...]


def graph_view(profile: Profile, placement: Plan, max_nodes: int = 60, max_blocks: int = 40) -> GraphView:
    """The boxes and edges that show ``placement`` on ``profile``'s graph.

    Up to ``max_nodes`` nodes, one box per node. Beyond, the graph is cut after each boundary
    node into blocks (consecutive blocks merged evenly when there are more than
    ``max_blocks``), and each block becomes one box per side it has nodes on. Since the device
    set is closed under ancestors, only the block the cut runs through has both.
    """
    nodes = profile.nodes
    side = {name: "device" for name in placement.device}
    side.update((name, "server") for name in placement.server)
    outputs = set(profile.outputs)
    condensed = len(nodes) > max_nodes
    groups = _blocks(profile, max_blocks) if condensed else [[node.name] for node in nodes]

    boxes: list[Box] = []
    owner: dict[str, int] = {}
    for group in groups:
        for where in ("device", "server"):
            members = tuple(name for name in group if side[name] == where)
            if not members:
                continue
            for name in members:
                owner[name] = len(boxes)
            label = _block_label(members) if condensed else members[0]
            boxes.append(Box(label, where, members, any(name in outputs for name in members)))

    flows: dict[tuple[int, int], dict[str, int]] = {}
    for node in nodes:
        target = owner[node.name]
        for source_name in node.inputs:
            source = owner[source_name]
            if source != target:
                flows.setdefault((source, target), {})[source_name] = profile.node(source_name).out_bytes
    edges = tuple(
        Edge(
            source,
            target,
            boxes[source].side == "device" and boxes[target].side == "server",
            tuple(tensors),
            sum(tensors.values()),
        )
        for (source, target), tensors in sorted(flows.items())
    )
    layers = [0] * len(boxes)
    for edge in sorted(edges, key=lambda e: e.target):
        layers[edge.target] = max(layers[edge.target], layers[edge.source] + 1)
    return GraphView(tuple(boxes), edges, condensed, tuple(layers))


def _blocks(profile: Profile, max_blocks: int) -> list[list[str]]:
    """Runs of nodes in graph order, each ending at a boundary node (the last run at the end)."""
    names = profile.names
    ends = set(series_boundaries(profile))
    runs: list[list[str]] = [[]]
    for name in names:
        runs[-1].append(name)
        if name in ends:
            runs.append([])
    runs = _join_trailing_singles([run for run in runs if run])
    if len(runs) > max_blocks:
        per = math.ceil(len(runs) / max_blocks)
        runs = [[name for run in runs[i : i + per] for name in run] for i in range(0, len(runs), per)]
    return runs


def _join_trailing_singles(runs: list[list[str]]) -> list[list[str]]:
    """Join each one-node run that follows a longer run to it, once (a ResNet block's final relu)."""
    joined: list[list[str]] = []
    extended = False
    for run in runs:
        if len(run) == 1 and joined and len(joined[-1]) > 1 and not extended:
            joined[-1] = [*joined[-1], *run]
            extended = True
        else:
            joined.append(run)
            extended = False
    return joined


def _block_label(members: Sequence[str]) -> str:
    count = f"{len(members)} node" + ("" if len(members) == 1 else "s")
    if len(members) == 1:
        return f"{members[0]} ({count})"
    return f"{members[0]} .. {members[-1]} ({count})"


# ----------------------------------------------------------------------------------------------
# Panel 2: predicted step time against bandwidth.


def scaled_link(link: Link, uplink_mbps: float) -> Link:
    """``link`` with the uplink set to ``uplink_mbps`` Mbit/s, the downlink scaled alike, the rtt kept.

    The downlink keeps the profile's downlink/uplink ratio; when either rate is unlimited
    there is no ratio and the downlink is kept as it is.
    """
    up = bytes_per_s(uplink_mbps)
    if math.isfinite(link.uplink_bytes_per_s) and math.isfinite(link.downlink_bytes_per_s):
        down = up * link.downlink_bytes_per_s / link.uplink_bytes_per_s
    else:
        down = link.downlink_bytes_per_s
    return Link(up, down, link.rtt_s)


@dataclass(frozen=True)
class CutChange:
    """A bandwidth where the optimal placement changes.

    The plan is ``before`` at ``below_mbps`` and ``after`` at ``above_mbps``, two uplink
    bandwidths within the sweep's tolerance of each other; the change is drawn at their
    geometric mean, :attr:`mbps`.
    """

    below_mbps: float
    above_mbps: float
    before: Plan
    after: Plan

    @property
    def mbps(self) -> float:
        return math.sqrt(self.below_mbps * self.above_mbps)


@dataclass(frozen=True)
class Sweep:
    """Predicted step times over uplink bandwidths (Mbit/s), the link otherwise as the profile's.

    Attributes:
        mbps: the uplink bandwidths, increasing.
        optimal: the optimal plan's predicted step time at each.
        baselines: each baseline's predicted step time at each (keys of :data:`BASELINES`).
        cuts: the optimal plan's cut at each.
        changes: where the optimal placement changes, in increasing bandwidth.
    """

    mbps: tuple[float, ...]
    optimal: tuple[float, ...]
    baselines: Mapping[str, tuple[float, ...]]
    cuts: tuple[tuple[str, ...], ...]
    changes: tuple[CutChange, ...]


def default_bandwidths(link: Link, points: int = 61) -> list[float]:
    """Log-spaced uplinks from 1 to 1000 Mbit/s, widened to reach 3x either side of ``link``'s uplink."""
    low, high = 1.0, 1000.0
    own = mbit_per_s(link.uplink_bytes_per_s)
    if math.isfinite(own):
        low, high = min(low, own / 3), max(high, own * 3)
    step = (math.log10(high) - math.log10(low)) / (points - 1)
    return [10 ** (math.log10(low) + i * step) for i in range(points)]


def sweep(
    profile: Profile,
    bandwidths: Sequence[float] | None = None,
    method: str = "blockwise",
    tolerance: float = 1.005,
    pin_device: Collection[str] = (),
) -> Sweep:
    """Plan ``profile`` at each uplink bandwidth and locate every change of the optimal placement.

    Parameters:
        profile: the cost graph; its link gives the downlink/uplink ratio and the rtt.
        bandwidths: uplink Mbit/s to plan at (default :func:`default_bandwidths`).
        method: the exact planning method, ``"blockwise"`` or ``"full"``.
        tolerance: a change between two sweep points is bisected (in log space) until the
            bandwidths on either side are within this ratio of each other.
        pin_device: nodes every plan of the sweep keeps on the device (as the plan drawn did).

    Two placements are the same when they put the same nodes on the device. Between two
    sweep points whose placements differ, bisection finds the first change; if the placement
    there still differs from the right point's, the search goes on from it, so several
    changes between two points are all found as long as each holds over a wider range than
    ``tolerance``.
    """
    if method not in _EXACT_METHODS:
        raise ValueError(f"the sweep plans with an exact method ({', '.join(_EXACT_METHODS)}), not {method!r}")
    mbps = sorted(float(b) for b in (bandwidths if bandwidths is not None else default_bandwidths(profile.link)))
    if not mbps or mbps[0] <= 0:
        raise ValueError("sweep bandwidths must be positive Mbit/s")
    if not tolerance > 1.0:
        raise ValueError(f"the bisection tolerance is a ratio above 1, got {tolerance!r}")

    def solve(at: float) -> Plan:
        return plan(profile.with_link(scaled_link(profile.link, at)), method, pin_device)

    plans, costs_at = [], []
    for at in mbps:
        linked = profile.with_link(scaled_link(profile.link, at))
        plans.append(plan(linked, method, pin_device))
        costs_at.append(planned_baselines(linked))
    changes: list[CutChange] = []
    for (left_at, left), (right_at, right) in zip(zip(mbps, plans), zip(mbps[1:], plans[1:])):
        while left.device != right.device:
            low, low_plan, high, high_plan = left_at, left, right_at, right
            while high / low > tolerance:
                middle = math.sqrt(low * high)
                middle_plan = solve(middle)
                if middle_plan.device == low_plan.device:
                    low, low_plan = middle, middle_plan
                else:
                    high, high_plan = middle, middle_plan
            changes.append(CutChange(low, high, low_plan, high_plan))
            left_at, left = high, high_plan
    return Sweep(
        mbps=tuple(mbps),
        optimal=tuple(p.predicted_step_s for p in plans),
        baselines={name: tuple(costs[name] for costs in costs_at) for name in BASELINES},
        cuts=tuple(p.cut for p in plans),
        changes=tuple(changes),
    )


def cut_label(placement: Plan, inputs: Collection[str] = (), limit: int = 2) -> str:
    """A short name for a placement: ``"all on device"``, ``"server only"`` (nothing but the
    ``inputs`` on the device) or its cut tensors (``"a, b +3"``)."""
    if not placement.server:
        return "all on device"
    if inputs and set(placement.device) <= set(inputs):
        return "server only"
    shown = ", ".join(placement.cut[:limit])
    more = len(placement.cut) - limit
    return shown + (f" +{more}" if more > 0 else "")


# ----------------------------------------------------------------------------------------------
# Drawing.


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotError(
            "plotting needs matplotlib: pip install matplotlib (or pip install 'lightning-split[plot]')"
        ) from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_plan(
    profile: Profile,
    placement: Plan,
    path: str | Path,
    baselines: Mapping[str, float] | None = None,
    title: str | None = None,
    bandwidths: Sequence[float] | None = None,
    max_nodes: int = 60,
    found: Resources | None = None,
    pin_device: Collection[str] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Draw ``placement`` of ``profile`` and its step time against bandwidth into ``path``.

    Parameters:
        profile: the profile the plan was made from.
        placement: the plan to draw (from :func:`lightning_split.planning.planner.plan`).
        path: where to write; ``.png`` or ``.svg`` (SVG text stays text, so it can be searched).
        baselines: the baselines' step times at the profile's own link (marked on the sweep);
            computed when not given.
        title: the figure title; defaults to the profile's ``model`` or ``name`` field.
        bandwidths: uplink Mbit/s to sweep (default :func:`default_bandwidths`).
        max_nodes: above this many nodes the graph panel shows blocks (see :func:`graph_view`).
        found: the plan's device memory and energy, shown under the title (computed when not
            given, :func:`lightning_split.planning.resources.resources`).
        pin_device: the pins the plan was made with, which the sweep's plans keep too.
        notes: more lines under the title (what the codec puts on the wire, whether a raw
            input crosses: :meth:`lightning_split.report.PlanOutcome.crossing_lines`).

    Returns:
        The path written.

    Raises:
        PlotError: the suffix is not ``.png`` or ``.svg``, or matplotlib is not installed.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise PlotError(f"cannot tell the figure format of {path}: use a .png or .svg file name")
    plt = _pyplot()
    view = graph_view(profile, placement, max_nodes=max_nodes)
    method = placement.method if placement.method in _EXACT_METHODS else "blockwise"
    curves = sweep(profile, bandwidths, method, pin_device=pin_device)
    own = baselines if baselines is not None else planned_baselines(profile)
    name = title or profile.extra.get("model") or profile.extra.get("name") or "profile"

    depth = max(view.layers, default=0) + 1
    height = min(max(6.0, 0.26 * depth + 2.0), 18.0)
    widest = max((view.layers.count(layer) for layer in set(view.layers)), default=1)
    graph_width = min(0.6 + 0.2 * widest, 1.4)
    with plt.rc_context({"svg.fonttype": "none", "font.size": 9}):
        figure = plt.figure(figsize=(15, height))
        # A tall graph panel keeps the sweep at most _SWEEP_HEIGHT inches high, at the top.
        sweep_rows = [min(height, _SWEEP_HEIGHT), max(height - _SWEEP_HEIGHT, 0.0)]
        grid = figure.add_gridspec(2, 2, width_ratios=[graph_width, 1.0], height_ratios=sweep_rows)
        graph_axes = figure.add_subplot(grid[:, 0])
        sweep_axes = figure.add_subplot(grid[0, 1])
        _draw_graph(graph_axes, profile, placement, view)
        _draw_sweep(sweep_axes, profile, placement, curves, own)
        figure.suptitle(
            f"{name}: predicted step {placement.predicted_step_s * 1e3:.1f} ms ({placement.method}), "
            f"link {profile.link.describe()}\n{_resources_line(found or resources(profile, placement.device))}"
            + "".join(f"\n{note}" for note in notes),
            fontsize=11,
        )
        figure.tight_layout(rect=(0, 0, 1, 0.95 - 0.02 * len(notes)))
        figure.savefig(path, dpi=100)
        plt.close(figure)
    return path


def _resources_line(found: Resources) -> str:
    """``device memory 12.3 MiB of 3.73 GiB, device energy 1.234 J per step (jetson-nano at 10 W, Wi-Fi)``."""
    capacity = "" if found.capacity_bytes is None else f" of {format_bytes(found.capacity_bytes)}"
    return (
        f"device memory {format_bytes(found.memory.total)}{capacity}, device energy "
        f"{found.energy.total_j:.3f} J per step ({found.model.describe()})"
    )


def _positions(view: GraphView) -> list[tuple[float, float]]:
    """Top-down layered layout: y is minus the depth, x orders each layer by its inputs' mean x."""
    rows: dict[int, list[int]] = {}
    for index, layer in enumerate(view.layers):
        rows.setdefault(layer, []).append(index)
    sources: dict[int, list[int]] = {}
    for edge in view.edges:
        sources.setdefault(edge.target, []).append(edge.source)
    x = [0.0] * len(view.boxes)
    for layer in sorted(rows):
        members = rows[layer]
        wanted = {i: sum(x[s] for s in sources.get(i, [])) / max(len(sources.get(i, [])), 1) for i in members}
        members.sort(key=lambda i: (wanted[i], i))
        for slot, index in enumerate(members):
            x[index] = slot - (len(members) - 1) / 2
    return [(x[i], -float(view.layers[i])) for i in range(len(view.boxes))]


def _draw_graph(axes: Any, profile: Profile, placement: Plan, view: GraphView) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    where = _positions(view)
    font = 7 if len(view.boxes) <= 40 else 6
    labeled: set[str] = set()
    for edge in view.edges:
        (x0, y0), (x1, y1) = where[edge.source], where[edge.target]
        span = y0 - y1
        axes.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={
                "arrowstyle": "-|>",
                "color": CUT_COLOR if edge.crossing else "#777777",
                "lw": 2.2 if edge.crossing else 0.8,
                "shrinkA": 7,
                "shrinkB": 7,
                "connectionstyle": f"arc3,rad={0.35 if span > 1 and x0 == x1 else 0.0}",
            },
            zorder=1,
        )
        # A tensor with several server consumers crosses once: only its first edge is labeled.
        fresh = [name for name in edge.tensors if name not in labeled] if edge.crossing else []
        if fresh:
            labeled.update(fresh)
            names = ", ".join(fresh[:2]) + (f" +{len(fresh) - 2}" if len(fresh) > 2 else "")
            size = sum(profile.node(name).out_bytes for name in fresh)
            axes.text(
                (x0 + x1) / 2 + 0.12,
                (y0 + y1) / 2,
                f"{names}: {format_bytes(size)}",
                color=CUT_COLOR,
                fontsize=font,
                ha="left",
                va="center",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": CUT_COLOR, "lw": 0.6},
                zorder=4,
            )
    for box, (x, y) in zip(view.boxes, where):
        axes.text(
            x,
            y,
            box.label + ("  \u2192 output" if box.output else ""),
            fontsize=font,
            ha="center",
            va="center",
            fontweight="bold" if box.output else "normal",
            bbox={
                "boxstyle": "round,pad=0.3",
                "fc": DEVICE_COLOR if box.side == "device" else SERVER_COLOR,
                "ec": "black" if box.output else "#555555",
                "lw": 1.6 if box.output else 0.6,
            },
            zorder=3,
        )
    xs = [x for x, _ in where] or [0.0]
    depth = max(view.layers, default=0)
    axes.set_xlim(min(xs) - 1.6, max(xs) + 1.6)
    axes.set_ylim(-depth - 0.7, 0.7)
    axes.axis("off")
    what = (
        f"{len(view.boxes)} blocks of {len(profile.nodes)} nodes" if view.condensed else f"{len(profile.nodes)} nodes"
    )
    axes.set_title(
        f"Placement ({what}): {len(placement.device)} on the device, {len(placement.server)} on the server",
        fontsize=10,
    )
    axes.legend(
        handles=[
            Patch(fc=DEVICE_COLOR, ec="#555555", label="device"),
            Patch(fc=SERVER_COLOR, ec="#555555", label="server"),
            Line2D([], [], color=CUT_COLOR, lw=2.2, label="tensor crossing the cut"),
            Patch(fc="white", ec="black", lw=1.6, label="model output"),
        ],
        loc="lower left",
        fontsize=8,
        framealpha=0.9,
    )


def _draw_sweep(axes: Any, profile: Profile, placement: Plan, curves: Sweep, own: Mapping[str, float]) -> None:
    ms = [t * 1e3 for t in curves.optimal]
    axes.plot(curves.mbps, ms, color="black", lw=2.4, label="optimal cut", zorder=2)
    for name in BASELINES:
        label, color, style = _BASELINE_STYLE[name]
        values = [t * 1e3 for t in curves.baselines[name]]
        axes.plot(curves.mbps, values, color=color, ls=style, lw=1.4, label=label, zorder=3)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("uplink bandwidth (Mbit/s; downlink scaled alike, rtt kept)")
    axes.set_ylabel("predicted step time (ms)")
    axes.grid(True, which="both", alpha=0.25)
    blend = axes.get_xaxis_transform()
    previous, side = 0.0, "right"
    inputs = [node.name for node in profile.nodes if node.kind == "input"]
    for change in curves.changes:
        axes.axvline(change.mbps, color="#888888", lw=0.8, ls="-", zorder=1)
        # Labels of changes close together go on alternate sides of their lines so they do not overlap.
        side = ("left" if side == "right" else "right") if change.mbps < previous * 1.5 else "right"
        previous = change.mbps
        axes.text(
            change.mbps,
            0.98,
            f" {cut_label(change.after, inputs)} ({change.mbps:.3g} Mbit/s) ",
            transform=blend,
            rotation=90,
            ha=side,
            va="top",
            fontsize=7,
            color="#444444",
        )
    here = mbit_per_s(profile.link.uplink_bytes_per_s)
    if math.isfinite(here):
        axes.axvline(here, color=CUT_COLOR, lw=1.2, ls="-.", zorder=2)
        axes.text(
            here,
            0.02,
            f" this link: {here:.3g} Mbit/s",
            transform=blend,
            rotation=90,
            fontsize=8,
            color=CUT_COLOR,
            ha="left",
            va="bottom",
        )
        axes.plot([here], [placement.predicted_step_s * 1e3], "o", color="black", zorder=4)
        for name in BASELINES:
            if name in own:
                axes.plot([here], [own[name] * 1e3], "o", color=_BASELINE_STYLE[name][1], ms=4, zorder=4)
    changes = f"{len(curves.changes)} change" + ("" if len(curves.changes) == 1 else "s")
    axes.set_title(f"Step time against bandwidth ({changes} of the optimal cut marked)", fontsize=10)
    axes.legend(loc="upper right", fontsize=8, framealpha=0.9)
