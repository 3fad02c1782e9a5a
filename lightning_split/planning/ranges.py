"""The optimal placement of a range of consecutive nodes, rtt term included, and the ``"full"`` method.

:func:`solve_range` places the nodes ``lo..hi`` of a :class:`~lightning_split.planning.cutgraph.CostGraph`:
the whole graph for ``"full"`` (:func:`full`), a segment between two boundaries for
``"blockwise"``. It takes the minimum cut of the range's cut graph and adds the rtt term as
the :mod:`~lightning_split.planning.cutgraph` docstring explains: paid when some node is on the
server, and all-device tried as well when nothing forces the server. With the blockwise
shortcuts, ranges that are plain chains (such as two adjacent boundaries) are solved by a linear
scan, ranges of fewer than :data:`SMALL_SEGMENT` nodes by augmenting paths (scipy's call costs
more than they do there), larger ones by :func:`~lightning_split.planning.mincut.default_algorithm`
(scipy's compiled max-flow unless another is selected). For the compiled engine the cut graph
is built as arrays (:mod:`~lightning_split.planning.cutarrays`), and :func:`solve_ranges` cuts
several ranges in one call.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_split.planning.batchcuts import screened_min_cuts
from lightning_split.planning.csgraph_flow import csgraph_min_cut_arrays
from lightning_split.planning.cutarrays import range_cut_arrays
from lightning_split.planning.cutgraph import CostGraph, cut_edges
from lightning_split.planning.mincut import default_algorithm, min_cut

__all__ = [
    "SMALL_SEGMENT",
    "RangeRequest",
    "full",
    "is_chain",
    "is_compiled",
    "scan_chain",
    "solve_range",
    "solve_ranges",
]

RangeRequest = tuple[int, int, set[int], set[int], bool]
"""``(lo, hi, on_device, on_server, server_elsewhere)``: one range for :func:`solve_ranges`."""

SMALL_SEGMENT = 64
"""Ranges (and clusters) of fewer nodes are cut by augmenting paths instead of the compiled engine."""


def full(costs: CostGraph, on_device: set[int], on_server: set[int]) -> list[int]:
    """Device positions of an optimal placement by one min cut of the whole graph (the ``"full"`` method)."""
    return solve_range(costs, 0, costs.n - 1, costs.with_inputs(on_device), on_server, False, False)[1]


def solve_range(
    costs: CostGraph,
    lo: int,
    hi: int,
    on_device: set[int],
    on_server: set[int],
    server_elsewhere: bool,
    blockwise: bool,
) -> tuple[int, list[int]]:
    """Optimal placement of the nodes ``lo..hi`` including the rtt term: (integer cost, device positions).

    Every node of the range not pinned to the server must have its consumers in the range (see
    :func:`~lightning_split.planning.cutgraph.cut_edges`). ``server_elsewhere`` says that some
    node outside the range is on the server, so the rtt term is paid whatever happens here;
    otherwise it is paid iff this range puts a node there. ``blockwise`` allows the shortcuts
    for chains and small segments; without it the range is solved by one cut with
    :func:`~lightning_split.planning.mincut.default_algorithm` (the ``"full"`` method).
    """
    if blockwise and is_chain(costs, lo, hi):
        return scan_chain(costs, lo, hi, on_device, on_server, server_elsewhere)
    algorithm = "augmenting_path" if blockwise and hi - lo < SMALL_SEGMENT else default_algorithm()
    value, device = _cut_range(costs, lo, hi, on_device, on_server, algorithm)
    return _with_rtt(costs, lo, hi, value, device, on_server, server_elsewhere)


def is_compiled(costs: CostGraph, lo: int, hi: int) -> bool:
    """Whether blockwise's :func:`solve_range` of ``lo..hi`` would call the compiled engine (batchable)."""
    return hi - lo >= SMALL_SEGMENT and default_algorithm() == "csgraph" and not is_chain(costs, lo, hi)


def solve_ranges(
    costs: CostGraph,
    requests: Sequence[RangeRequest],
    constants: Sequence[int] | None = None,
    ceiling: int | None = None,
) -> list[tuple[int, list[int]] | None]:
    """:func:`solve_range` (blockwise) of several ranges, those for the compiled engine in one call.

    Each request is ``(lo, hi, on_device, on_server, server_elsewhere)``. The ranges' cut graphs
    are joined at the source and sink and cut at once
    (:func:`~lightning_split.planning.batchcuts.screened_min_cuts`): exactly the cuts one call
    per range would find, without the per-call cost. With ``constants`` (per request, the cost
    outside its range: its case's total is the constant plus the range's value), a range whose
    total cannot be below ``ceiling`` (the best total known), or cannot be the least of the
    batch, comes back ``None`` after the engine's first phase instead of being cut exactly.
    """
    batch = [i for i, (lo, hi, *_) in enumerate(requests) if is_compiled(costs, lo, hi)]
    keys = {i: (*requests[i][:2], frozenset(requests[i][2]), frozenset(requests[i][3])) for i in batch}
    unique = list(dict.fromkeys(keys.values()))  # the last case's two variants share one cut
    results: list[tuple[int, list[int]] | None] = [None] * len(requests)
    done = [False] * len(requests)
    if unique and costs.arrays().fits:
        cuts = {key: range_cut_arrays(costs.arrays(), *key) for key in unique}
        lows = highs = None
        if constants is not None:
            lows = [min(constants[i] + costs.rtt2 * requests[i][4] for i in batch if keys[i] == key) for key in unique]
            highs = [min(constants[i] for i in batch if keys[i] == key) + costs.rtt2 for key in unique]
        parts = [(c.tails, c.heads, c.capacities, c.vertices) for c in cuts.values()]
        try:
            found = dict(zip(unique, screened_min_cuts(parts, lows, highs, ceiling)))
        except OverflowError:
            found = {}
        for i in (i for i in batch if keys[i] in found):
            lo, hi, _, on_server, elsewhere = requests[i]
            cut, done[i] = found[keys[i]], True
            if cut is not None:
                device = cuts[keys[i]].device_positions(cut[1])
                results[i] = _with_rtt(costs, lo, hi, cut[0], device, on_server, elsewhere)
    return [
        result if finished else solve_range(costs, *request, True)
        for request, result, finished in zip(requests, results, done)
    ]


def _cut_range(
    costs: CostGraph, lo: int, hi: int, on_device: set[int], on_server: set[int], algorithm: str
) -> tuple[int, list[int]]:
    """The min cut of the range's cut graph: (value without the rtt, device positions)."""
    if algorithm == "csgraph" and costs.arrays().fits:
        cut = range_cut_arrays(costs.arrays(), lo, hi, on_device, on_server)
        try:
            value, reached = csgraph_min_cut_arrays(cut.tails, cut.heads, cut.capacities, cut.vertices, 0, 1)
            return value, cut.device_positions(reached)
        except OverflowError:
            algorithm = "augmenting_path"
    value, source_side = min_cut(cut_edges(costs, range(lo, hi + 1), on_device, on_server), algorithm)
    return value, sorted(v for v in source_side if lo <= v <= hi)


def _with_rtt(
    costs: CostGraph, lo: int, hi: int, value: int, device: list[int], on_server: set[int], server_elsewhere: bool
) -> tuple[int, list[int]]:
    """The range's cost with the rtt term, all-device tried when nothing forces the server (module docstring)."""
    any_server = len(device) < hi - lo + 1
    if any_server or server_elsewhere:
        value += costs.rtt2
    if any_server and not server_elsewhere and not any(lo <= v <= hi for v in on_server):
        all_device = sum(costs.dev[lo : hi + 1])
        if all_device <= value:
            return all_device, list(range(lo, hi + 1))
    return value, device


def is_chain(costs: CostGraph, lo: int, hi: int) -> bool:
    """Whether the nodes ``lo..hi`` form a path ``lo -> lo+1 -> ... -> hi`` with no other edge inside or out."""
    inputs, consumers = costs.inputs, costs.consumers
    return all(inputs[v] == (v - 1,) for v in range(lo + 1, hi + 1)) and all(
        len(consumers[v]) == 1 and consumers[v][0] == v + 1 for v in range(lo, hi)
    )


def scan_chain(
    costs: CostGraph, lo: int, hi: int, on_device: set[int], on_server: set[int], server_elsewhere: bool
) -> tuple[int, list[int]]:
    """Exact optimum of a chain ``lo -> lo+1 -> ... -> hi`` by trying every split (``D = lo..j``)."""
    first = max((v for v in on_device if lo <= v <= hi), default=lo - 1)
    last = min((v for v in on_server if lo <= v <= hi), default=hi + 1) - 1
    dev, srv, xfer, rtt2 = costs.dev, costs.srv, costs.xfer, costs.rtt2
    running = sum(dev[lo : first + 1]) + sum(srv[first + 1 : hi + 1])
    best_value, best_j = -1, first
    for j in range(first, last + 1):
        if j > first:
            running += dev[j] - srv[j]
        value = running
        if lo <= j < hi:
            value += xfer[j]
        if j < hi or server_elsewhere:
            value += rtt2
        if best_value < 0 or value < best_value:
            best_value, best_j = value, j
    return best_value, list(range(lo, best_j + 1))
