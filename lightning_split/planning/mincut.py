"""Minimum s-t cuts of a graph given as an edge list with integer capacities.

The input is the edge list that :func:`lightning_split.planning.cutgraph.cut_edges` builds:
``(u, v, capacity)`` triples over integer vertices, the source :data:`SOURCE` and the sink
:data:`SINK`, a capacity of ``None`` meaning infinite. :func:`min_cut` returns the cut's value
and its source side, by one of three algorithms:

``"csgraph"`` (the default, :data:`DEFAULT`)
    :func:`scipy.sparse.csgraph.maximum_flow` (compiled Dinic) by exact capacity scaling,
    since scipy counts in ``int32`` (see :mod:`~lightning_split.planning.csgraph_flow`): a
    millisecond on DenseNet-201's graph where networkx takes hundreds. Graphs whose capacities
    add up to ``2**62`` or more fall back to ``"augmenting_path"``. Its source side is the
    smallest one among the minimum cuts.
``"preflow_push"``
    :func:`networkx.minimum_cut` with :func:`networkx.algorithms.flow.preflow_push`. On a
    500-node residual stack it was the fastest of preflow_push, boykov_kolmogorov, dinitz,
    shortest_augmenting_path and edmonds_karp (see ``_FLOW_FUNC``). Its source side is the
    largest one among the minimum cuts.
``"augmenting_path"``
    Shortest augmenting paths (Edmonds-Karp) on a plain dict residual graph, which beats
    networkx's setup cost on graphs of a few dozen vertices. Its source side is the smallest
    one among the minimum cuts.

These source sides are unique (they do not depend on the order of the edges or of the
augmentations), so each algorithm's answer is a function of the graph alone. networkx's flow
algorithms are not exact with float capacities (round-off can return a wrong partition), hence
integer capacities: the planners count in picoseconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import networkx as nx
from networkx.algorithms.flow import preflow_push

from lightning_split.planning.costmodel import PlanningError
from lightning_split.planning.csgraph_flow import csgraph_min_cut

__all__ = ["ALGORITHMS", "DEFAULT", "SINK", "SOURCE", "Edge", "default_algorithm", "min_cut", "use_algorithm"]

SOURCE = -1
SINK = -2
Edge = tuple[int, int, "int | None"]
"""``(u, v, capacity)``: an edge of the cut graph; a capacity of ``None`` is infinite."""

_FLOW_FUNC = preflow_push
ALGORITHMS = ("csgraph", "preflow_push", "augmenting_path")
DEFAULT = "csgraph"
_selected = [DEFAULT]


def default_algorithm() -> str:
    """The algorithm the planners use for graphs too large for augmenting paths (:data:`DEFAULT` unless selected)."""
    return _selected[-1]


@contextmanager
def use_algorithm(algorithm: str) -> Iterator[None]:
    """Within the block, the planners cut large graphs with ``algorithm`` (one of :data:`ALGORITHMS`).

    For comparisons such as ``benchmarks/planner.py``'s: every engine is exact, so the
    optimum's value does not change; only where several placements are optimal may the one
    returned differ (``"preflow_push"`` returns the largest source side, the others the smallest).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown min-cut algorithm {algorithm!r}; expected one of {ALGORITHMS}")
    _selected.append(algorithm)
    try:
        yield
    finally:
        _selected.pop()


def min_cut(edges: Sequence[Edge], algorithm: str = DEFAULT) -> tuple[int, set[int]]:
    """The value and the source side of a minimum :data:`SOURCE`-:data:`SINK` cut.

    Parameters:
        edges: the graph; parallel edges add up, vertices are those the edges name.
        algorithm: one of :data:`ALGORITHMS`, see the module docstring.

    Raises:
        PlanningError: every cut is infinite (a path of infinite edges joins the source to the
            sink): no feasible placement satisfies the pins.
    """
    if algorithm == "csgraph":
        try:
            return csgraph_min_cut(edges, SOURCE, SINK)
        except OverflowError:
            return _augmenting_min_cut(edges)
    if algorithm == "augmenting_path":
        return _augmenting_min_cut(edges)
    if algorithm == "preflow_push":
        return _networkx_min_cut(edges)
    raise ValueError(f"unknown min-cut algorithm {algorithm!r}; expected one of {ALGORITHMS}")


def _networkx_min_cut(edges: Sequence[Edge]) -> tuple[int, set[int]]:
    graph = nx.DiGraph()
    graph.add_nodes_from((SOURCE, SINK))
    for u, v, capacity in edges:
        if capacity is None:
            graph.add_edge(u, v)
        else:
            graph.add_edge(u, v, capacity=capacity)
    try:
        value, (source_side, _) = nx.minimum_cut(graph, SOURCE, SINK, flow_func=_FLOW_FUNC)
    except nx.NetworkXUnbounded:  # an infinite path s -> t; resolve_pins rules it out beforehand
        raise PlanningError("no feasible placement satisfies the pins") from None
    return int(value), source_side


def _augmenting_min_cut(edges: Sequence[Edge]) -> tuple[int, set[int]]:
    """Edmonds-Karp; infinite capacities become one more than the sum of the finite ones, which no flow reaches."""
    infinite = 1 + sum(capacity for _, _, capacity in edges if capacity is not None)
    residual: dict[int, dict[int, int]] = {SOURCE: {}, SINK: {}}
    for u, v, capacity in edges:
        out = residual.setdefault(u, {})
        out[v] = out.get(v, 0) + (infinite if capacity is None else capacity)
        residual.setdefault(v, {}).setdefault(u, 0)
    flow = _saturate_two_edge_paths(residual)
    while True:
        parent = _shortest_augmenting_path(residual)
        if SINK not in parent:
            if flow >= infinite:  # only an infinite path s -> t carries this much
                raise PlanningError("no feasible placement satisfies the pins")
            return flow, set(parent)
        bottleneck, v = infinite, SINK
        while v != SOURCE:
            u = parent[v]
            bottleneck = min(bottleneck, residual[u][v])
            v = u
        v = SINK
        while v != SOURCE:
            u = parent[v]
            residual[u][v] -= bottleneck
            residual[v][u] += bottleneck
            v = u
        flow += bottleneck


def _saturate_two_edge_paths(residual: dict[int, dict[int, int]]) -> int:
    """Push flow along every path s -> v -> t (most of the flow, without a search); return how much."""
    flow = 0
    from_source = residual[SOURCE]
    for v, capacity in from_source.items():
        through = min(capacity, residual[v].get(SINK, 0))
        if through:
            from_source[v] -= through
            residual[v][SOURCE] += through
            residual[v][SINK] -= through
            residual[SINK][v] += through
            flow += through
    return flow


def _shortest_augmenting_path(residual: dict[int, dict[int, int]]) -> dict[int, int]:
    """Breadth-first search tree from the source over residual edges, until it reaches the sink."""
    parent: dict[int, int] = {SOURCE: SOURCE}
    queue = deque([SOURCE])
    while queue and SINK not in parent:
        u = queue.popleft()
        for v, capacity in residual[u].items():
            if capacity and v not in parent:
                parent[v] = u
                queue.append(v)
    return parent
