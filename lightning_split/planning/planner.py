"""Optimal device/server placement: the minimum s-t cut of a profile's cost graph.

The planner minimises ``T(D, S)`` of ``docs/cost-model.md`` over feasible placements: every
``"input"`` node on the device, no edge from the server back to the device, and the user's
pins respected. Two exact methods solve it, and a few baselines give something to compare to.

``"full"``
    One minimum s-t cut of the whole graph (:func:`~lightning_split.planning.ranges.full`). The
    cut graph (:mod:`~lightning_split.planning.cutgraph`) has a vertex per node, the source on
    the device side and the sink on the server side: ``s -> v`` costs the server time, ``v ->
    t`` the device time, an infinite edge against each data edge makes finite cuts exactly the
    feasible placements, and an auxiliary vertex per tensor charges its transfer once, when it
    crosses. The rtt term is added afterwards, and all-device compared. Capacities are integer
    picoseconds, since networkx's flow algorithms are not exact in float
    (:mod:`~lightning_split.planning.mincut`); :attr:`Plan.predicted_step_s` is recomputed in
    float from the profile.

``"blockwise"`` (the default)
    The same optimum, found by series decomposition. A node ``b`` is a *boundary* when every
    other node is an ancestor or a descendant of ``b`` and no edge runs from a strict ancestor
    of ``b`` to a strict descendant (:func:`boundaries`; on a ResNet, the block outputs). The
    boundaries form a chain ``b1 < ... < bk`` in graph order, and ``D`` is closed under
    ancestors, so ``D`` holds a prefix ``b1..bi`` of that chain: the nodes up to ``bi`` are all
    on the device (its ancestors), those from ``b(i+1)`` all on the server (its descendants),
    and only the segment strictly between them is free. Because no edge skips a boundary, the
    nodes before ``bi`` pay no transfer (their consumers are at or before ``bi``), the nodes
    after ``b(i+1)`` pay their server time and return trips only, and every term that depends
    on the free nodes involves only ``{bi} + segment + {b(i+1)}``. So the best placement of
    case ``i`` costs a prefix device sum, plus a suffix server sum, plus ``2 rtt``, plus the min
    cut of the small graph of that range with ``bi`` pinned to the device and ``b(i+1)`` to the
    server. Two more cases complete the cover of all feasible placements: ``b1`` on the server
    (the range before ``b1`` is free, inputs pinned to the device) and ``bk`` on the device (the
    range after it is free; all-device included, rtt handled as in ``"full"``). The minimum over
    the cases is the global optimum, exactly, since each case is solved exactly in the same
    integer picoseconds as ``"full"``.

    Pins: a server pin at or before ``bi``, or a device pin (or input) at or after ``b(i+1)``,
    rules case ``i`` out; pins inside the range become pins of its subproblem. Conflicting pins
    are rejected before solving with the same :class:`PlanningError` as ``"full"``.

    Speed: prefix and suffix sums are computed once. Cases are tried in increasing order of a
    lower bound (prefix + suffix + ``min(device, server)`` per free node + the cheapest transfer
    of the range, which some tensor must pay when the range has a node on each side) and the
    search stops when the bound reaches the best value found. Ranges that are plain chains
    (such as two adjacent boundaries) are solved by a linear scan, ranges of fewer than
    ``SMALL_SEGMENT`` nodes by a small Edmonds-Karp, larger ones by networkx. Boundaries take
    linear time to find (see ``_boundary_positions``). A graph with several inputs or outputs
    has boundaries only after its last node without inputs and before its first node without
    consumers; a graph with none is solved by one min cut of the whole graph, as ``"full"``.

    Side nodes. Traced graphs hold nodes off the main path: dead ends that reach no model output
    (ViT's ``_assert`` chains, unused ``getattr`` of shapes and attention weights) and constants
    that no model input reaches (Swin's relative position biases, computed from parameters).
    A single one makes most boundaries disappear, since a boundary must be comparable with
    every node. So blockwise decomposes the *core* instead: the nodes reachable from an input
    that reach an output. Its ancestors and descendants within the core are those in the whole
    graph (a path between core nodes has only core nodes on it), so the boundaries above, taken
    on the core subgraph, still split every feasible placement into cases ``i``. The other nodes
    form *clusters*: connected by an edge, or consumers of the same core tensor (they share its
    transfer). A cluster touches the core only through the core nodes it consumes (``F``; only
    dead ends consume core nodes) and those it feeds (``G``; only constants feed them).

    A cluster is attached to the gap between consecutive usable boundaries ``bj < b(j+1)`` when
    ``F`` lies in ``[bj, b(j+1))`` and ``G`` in ``(bj, b(j+1)]``; :func:`_usable_boundaries` keeps
    exactly the core boundaries for which every cluster has such a gap (a cluster touching core
    nodes ``lo..hi`` blocks those strictly between, ``hi`` if in ``F``, ``lo`` if in ``G``, and a
    node in both). A cluster touching no core node is *floating*, attached to the last gap. Then
    in case ``i`` a cluster of gap ``j``:

    - ``j < i``: every core node it touches is on the device, and so are the core consumers of
      its ``F`` (no core edge skips ``b(j+1)``), so a tensor of ``F`` crosses only for the
      cluster. Its best placement given that, its value ``on_device``, is independent of every
      other choice: clusters share no tensor (they would be one cluster) and no node.
    - ``j > i``: every core node it touches is at or after ``b(i+1)``, hence a descendant of it,
      hence on the server. Its best placement given that is ``on_server``, again independent
      (core nodes on the server pay no transfer). A floating cluster's ``on_server`` is its
      best placement outright.
    - ``j = i``: each of its nodes has all inputs and consumers in ``{bi} + segment + clusters
      of gap i + {b(i+1)}``, so the range's min cut includes it exactly.

    Each cluster's two values are found once, by a min cut of the cluster with the core nodes
    it touches pinned to one side (enumeration for clusters of a few nodes), and summed into the
    prefix and suffix sums like a node's device and server time. The nodes are renumbered so
    that every range is contiguous (gap ``j``'s core nodes and clusters in graph order, between
    ``bj`` and ``b(j+1)``), which keeps the range solvers above unchanged. The rtt term: in every
    case but the last, ``b(i+1)`` is on the server, so it is paid whatever the clusters do. In
    the last case it splits in two: every cluster before ``bk`` all on the device (then the
    range decides the rtt, as before), or the clusters at their ``on_device`` value plus the
    rtt, which is exact when some cluster node is on the server and otherwise an upper bound on
    the placement it returns, never below the optimum. Pins on cluster nodes enter their two
    values (infinite when the pins cannot hold there, which rules the case out) or the range's
    cut. So the minimum over the cases is again the global optimum, exactly. The random-DAG
    tests hang dead-end chains, branches spanning several blocks, unused inputs and constants
    off the middle of the graph and compare both methods with :func:`exhaustive`.

Baselines: ``"device_only"``, ``"server_only"`` and ``"best_layerwise"`` (the best feasible prefix
of the profile order), as defined in ``docs/cost-model.md``. ``"exhaustive"`` enumerates every
feasible placement; it is a test oracle for small graphs.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lightning_split.planning.costmodel import (
    Breakdown,
    Plan,
    PlanningError,
    as_names,
    graph_positions,
    is_feasible,
    make_plan,
    step_time,
)
from lightning_split.planning.cutgraph import INFEASIBLE, CostGraph, cut_edges, resolve_pins
from lightning_split.planning.exhaustive import Choices, cheapest_placement, exhaustive
from lightning_split.planning.mincut import min_cut
from lightning_split.planning.profile import Profile
from lightning_split.planning.ranges import SMALL_SEGMENT, full, solve_range

__all__ = [
    "METHODS",
    "Breakdown",
    "Plan",
    "PlanningError",
    "baselines",
    "best_layerwise",
    "boundaries",
    "device_only",
    "exhaustive",
    "is_feasible",
    "plan",
    "series_boundaries",
    "server_only",
    "step_time",
]

METHODS = ("blockwise", "full", "exhaustive", "device_only", "server_only", "best_layerwise")
_TINY_CLUSTER = 8  # clusters of fewer nodes are placed by enumeration instead of a min cut


# ----------------------------------------------------------------------------------------------
# Boundaries and the blockwise method.


def _boundary_positions(costs: CostGraph) -> list[int]:
    """Positions of the boundary nodes, in O(nodes + edges).

    In graph order, ``b`` at position ``p`` is a boundary iff (a) no edge ``(u, w)`` has
    ``u < p < w``, (b) every node before ``p`` has a consumer and (c) every node after ``p``
    has an input. Necessity: ancestors of ``b`` lie before it and descendants after, so by
    the definition the nodes before ``p`` are exactly its ancestors (each has a path to ``b``,
    hence a consumer) and those after are its descendants (each has an input); an edge over
    ``p`` would run from an ancestor to a descendant. Sufficiency: by (a), consumers of nodes
    before ``p`` are at or before ``p``, so backwards from ``p`` each such node has a consumer
    that is ``b`` or a later ancestor of ``b`` (b); likewise forwards each node after ``p`` has an
    input that is ``b`` or an earlier descendant (c); and (a) is the no-skip condition.
    (a) is a sweep over a difference array of open edges; (b) and (c) compare ``p`` with the
    first node without consumers and the last node without inputs.
    """
    n = costs.n
    opened = [0] * (n + 1)
    last_source, first_sink = -1, n
    for w in range(n):
        sources = costs.inputs[w]
        if not sources:
            last_source = w
        for u in sources:
            opened[u + 1] += 1
            opened[w] -= 1
        if first_sink == n and not costs.consumers[w]:
            first_sink = w
    result = []
    spanning = 0
    for p in range(n):
        spanning += opened[p]
        if spanning == 0 and last_source <= p <= first_sink:
            result.append(p)
    return result


def boundaries(profile: Profile) -> list[str]:
    """Names of the boundary nodes of the profile's graph, in graph order.

    A node ``b`` is a boundary iff every other node is an ancestor or a descendant of ``b`` and
    no edge runs from a strict ancestor of ``b`` to a strict descendant (none skips it). On a
    ResNet these are the outputs of the residual blocks. Runs in linear time; see
    ``_boundary_positions`` for the proof.
    """
    costs = CostGraph(profile)
    return [costs.names[p] for p in _boundary_positions(costs)]


def _core_mask(costs: CostGraph) -> list[bool]:
    """Which nodes are *core*: reachable from a model input and reaching a model output (two searches)."""

    def reached(starts: list[int], neighbours: list[Any]) -> list[bool]:
        seen = [False] * costs.n
        stack = starts
        for v in stack:
            seen[v] = True
        while stack:
            for u in neighbours[stack.pop()]:
                if not seen[u]:
                    seen[u] = True
                    stack.append(u)
        return seen

    outputs = [v for v in range(costs.n) if costs.is_output[v]]
    inputs = [v for v in range(costs.n) if costs.is_input[v]]
    return [a and b for a, b in zip(reached(outputs, costs.inputs), reached(inputs, costs.consumers))]


@dataclass
class _Cluster:
    """A connected group of non-core nodes and the core nodes it touches (original positions).

    ``feeds_on``: core nodes consumed by the cluster (F). ``feeds``: core nodes it feeds (G).
    ``gap``: index of the gap between usable boundaries it is attached to (set by the layout).
    ``on_device`` / ``on_server``: ``(value, device nodes)`` of its best placement with every
    core node it touches on that side, or ``None`` if the pins make that impossible.
    """

    nodes: list[int]
    feeds_on: set[int]
    feeds: set[int]
    gap: int = 0
    on_device: tuple[int, list[int]] | None = None
    on_server: tuple[int, list[int]] | None = None

    @property
    def touched(self) -> set[int]:
        return self.feeds_on | self.feeds


def _clusters(costs: CostGraph, core: list[bool]) -> list[_Cluster]:
    """Group the non-core nodes: linked by an edge, or consumers of the same core node (union-find)."""
    parent = list(range(costs.n))

    def find(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for v in range(costs.n):
        if core[v]:
            shared = [w for w in costs.consumers[v] if not core[w]]  # a shared tensor couples its dead ends
            for w in shared[1:]:
                parent[find(w)] = find(shared[0])
        else:
            for u in costs.inputs[v]:
                if not core[u]:
                    parent[find(u)] = find(v)
    groups: dict[int, _Cluster] = {}
    for v in range(costs.n):
        if not core[v]:
            cluster = groups.setdefault(find(v), _Cluster([], set(), set()))
            cluster.nodes.append(v)
            cluster.feeds_on.update(u for u in costs.inputs[v] if core[u])
            cluster.feeds.update(w for w in costs.consumers[v] if core[w])
    return list(groups.values())


def _usable_boundaries(costs: CostGraph, core: list[bool], clusters: list[_Cluster]) -> list[int]:
    """Positions of the boundaries of the core graph that no cluster straddles, in O(nodes + edges).

    The core part is :func:`_boundary_positions` on the core subgraph (reachability among core
    nodes is the same in the subgraph: a path between core nodes has only core nodes on it).
    A cluster touching core nodes ``lo..hi`` blocks the boundaries strictly between, ``hi`` if it
    consumes ``hi`` and ``lo < hi``, ``lo`` if it feeds ``lo`` and ``lo < hi``, and a node it both
    consumes and feeds; see the module docstring for why.
    """
    n = costs.n
    opened = [0] * (n + 1)
    last_source, first_sink = -1, n
    for w in range(n):
        if not core[w]:
            continue
        sources = costs.inputs[w]
        if not any(core[u] for u in sources):
            last_source = w
        for u in sources:
            if core[u]:
                opened[u + 1] += 1
                opened[w] -= 1
        if first_sink == n and not any(core[v] for v in costs.consumers[w]):
            first_sink = w
    for cluster in clusters:
        touched = cluster.touched
        if not touched:
            continue
        lo, hi = min(touched), max(touched)
        start = lo if lo in cluster.feeds and lo < hi else lo + 1
        stop = hi + 1 if hi in cluster.feeds_on and lo < hi else hi
        if start < stop:
            opened[start] += 1
            opened[stop] -= 1
        for v in cluster.feeds_on & cluster.feeds:
            opened[v] += 1
            opened[v + 1] -= 1
    result = []
    spanning = 0
    for p in range(n):
        spanning += opened[p]
        if core[p] and spanning == 0 and last_source <= p <= first_sink:
            result.append(p)
    return result


def series_boundaries(profile: Profile) -> list[str]:
    """Names of the nodes the ``"blockwise"`` method decomposes the graph at, in graph order.

    These are the boundaries of the *core* graph (nodes reachable from a model input that reach
    a model output) that no cluster of the other nodes (dead ends such as ``_assert`` calls,
    constants computed from parameters) straddles; see the module docstring. On a graph whose
    nodes are all core they are exactly :func:`boundaries`.
    """
    costs = CostGraph(profile)
    core = _core_mask(costs)
    return [costs.names[p] for p in _usable_boundaries(costs, core, _clusters(costs, core))]


def _cluster_cut(
    costs: CostGraph, cluster: _Cluster, core_on_device: bool, must_device: set[int], on_server: set[int]
) -> tuple[int, list[int]] | None:
    """Best placement of a cluster with all the core nodes it touches on one side: (value, device nodes).

    The value counts the cluster's own compute and transfers and, when the core nodes are on
    the device, the transfers of the core tensors it consumes (none of their core consumers is
    on the server in the cases that use this value). ``None`` if the pins make it infeasible.
    Clusters of fewer than ``_TINY_CLUSTER`` nodes are enumerated, larger ones cut.
    """
    if len(cluster.nodes) < _TINY_CLUSTER:
        return _enumerate_cluster(costs, cluster, core_on_device, must_device, on_server)
    edges = cut_edges(costs, cluster.nodes, must_device, on_server, cluster.touched, core_on_device)
    algorithm = "augmenting_path" if len(cluster.nodes) < SMALL_SEGMENT else "preflow_push"
    try:
        value, source_side = min_cut(edges, algorithm)
    except PlanningError:
        return None
    return value, [v for v in cluster.nodes if v in source_side]


def _enumerate_cluster(
    costs: CostGraph, cluster: _Cluster, core_on_device: bool, must_device: set[int], on_server: set[int]
) -> tuple[int, list[int]] | None:
    """:func:`_cluster_cut` by trying every feasible placement; for clusters of a few nodes.

    As in :func:`~lightning_split.planning.exhaustive.exhaustive`, with the core nodes outside:
    a node may go to the device only if no input of it is on the server (core inputs are on the
    server iff ``core_on_device`` is false), and to the server only if no core node it feeds is
    on the device. A node feeding a core node on the server always sends its tensor.
    """
    nodes = cluster.nodes
    local = {v: i for i, v in enumerate(nodes)}
    feeds_core = [any(w not in local for w in costs.consumers[v]) for v in nodes]
    eats_core = [any(u not in local for u in costs.inputs[v]) for v in nodes]
    choices = Choices(
        nodes=nodes,
        consumers=[[local[w] for w in costs.consumers[v] if w in local] for v in nodes],
        may_device=[v not in on_server and (core_on_device or not eats) for v, eats in zip(nodes, eats_core)],
        may_server=[v not in must_device and not (feeds and core_on_device) for v, feeds in zip(nodes, feeds_core)],
        crosses=[feeds and not core_on_device for feeds in feeds_core],
        device=costs.dev,
        transfer=costs.xfer,
        server=costs.srv,
    )
    # The core tensors the cluster consumes, with their consumers in it: sent when one of those is on the server.
    shared = [(costs.xfer[u], [local[w] for w in costs.consumers[u] if w in local]) for u in cluster.feeds_on]

    def finish(cost: int, _: int, in_server: list[bool]) -> int:
        return cost + sum(trip for trip, consumers in shared if any(in_server[i] for i in consumers))

    value, device = cheapest_placement(choices, INFEASIBLE, finish if core_on_device and shared else None, True)
    return None if device is None else (value, [nodes[i] for i in device])


class _Layout:
    """The series decomposition of a cost graph with its non-core clusters (see the module docstring).

    ``costs`` is the graph renumbered so that each range between consecutive usable boundaries
    is contiguous: gap ``g`` (0 before the first boundary, ``g`` after boundary ``g``) holds the
    core nodes strictly between its boundaries and the clusters attached to it, in graph order;
    floating clusters (touching no core node) join the last gap. ``order[p]`` is the original
    position of new position ``p``; ``bounds`` are new positions.
    """

    def __init__(self, costs: CostGraph, must_device: set[int], on_server: set[int]) -> None:
        core = _core_mask(costs)
        if all(core):  # the common case: no side nodes, the boundaries of the whole graph
            clusters, bounds = [], _boundary_positions(costs)
        else:
            clusters = _clusters(costs, core)
            bounds = _usable_boundaries(costs, core, clusters)
        self.clusters = clusters
        if not bounds or not clusters:
            self.costs, self.order, self.bounds, self.core = costs, list(range(costs.n)), bounds, core
            return
        is_bound = set(bounds)
        gaps: list[list[int]] = [[] for _ in range(len(bounds) + 1)]
        for v in range(costs.n):
            if core[v] and v not in is_bound:
                gaps[bisect.bisect_right(bounds, v)].append(v)
        for cluster in clusters:
            touched = cluster.touched
            if touched:
                lo = min(touched)
                cluster.gap = bisect.bisect_right(bounds, lo) - (lo in is_bound and lo in cluster.feeds)
            else:
                cluster.gap = len(bounds)
            gaps[cluster.gap].extend(cluster.nodes)
            cluster.on_device = _cluster_cut(costs, cluster, True, must_device, on_server)
            cluster.on_server = _cluster_cut(costs, cluster, False, must_device, on_server)
        order = sorted(gaps[0])
        for b, gap in zip(bounds, gaps[1:]):
            order.append(b)
            order.extend(sorted(gap))
        self.order = order
        self.costs = costs.reordered(order)
        rank = {old: new for new, old in enumerate(order)}
        self.bounds = [rank[b] for b in bounds]
        self.core = [core[v] for v in order]


def _blockwise(costs: CostGraph, on_device: set[int], on_server: set[int]) -> list[int]:
    """Device positions of an optimal placement by series decomposition at the usable boundaries."""
    must_device = costs.with_inputs(on_device)
    layout = _Layout(costs, must_device, on_server)
    if not layout.bounds:
        return solve_range(costs, 0, costs.n - 1, must_device, on_server, False, True)[1]
    order, bounds, core, clusters = layout.order, layout.bounds, layout.core, layout.clusters
    last_of: dict[int, _Cluster] = {}  # a cluster's last new position -> the cluster
    if clusters:
        rank = {old: new for new, old in enumerate(order)}
        must_device = {rank[v] for v in must_device}
        on_server = {rank[v] for v in on_server}
        last_of = {rank[cluster.nodes[-1]]: cluster for cluster in clusters}
    costs = layout.costs
    n, k = costs.n, len(bounds)
    dev, srv, xfer, rtt2 = costs.dev, costs.srv, costs.xfer, costs.rtt2

    # plain_device: every node on the device. prefix_device / suffix_server: core nodes on one
    # side, each cluster at its best value for that side, counted at its last node.
    plain_device = [0] * (n + 1)
    prefix_device = [0] * (n + 1)
    prefix_cheapest = [0] * (n + 1)
    for v in range(n):
        plain_device[v + 1] = plain_device[v] + dev[v]
        prefix_cheapest[v + 1] = prefix_cheapest[v] + min(dev[v], srv[v])
        lump = dev[v] if core[v] else 0
        if v in last_of:
            lump = INFEASIBLE if last_of[v].on_device is None else last_of[v].on_device[0]
        prefix_device[v + 1] = prefix_device[v] + lump
    suffix_server = [0] * (n + 1)
    for v in range(n - 1, -1, -1):
        lump = srv[v] if core[v] else 0
        if v in last_of:
            lump = INFEASIBLE if last_of[v].on_server is None else last_of[v].on_server[0]
        suffix_server[v] = suffix_server[v + 1] + lump
    last_core_device = max((v for v in must_device if core[v]), default=-1)
    first_core_server = min((v for v in on_server if core[v]), default=n)
    first_server = min(on_server, default=n)
    has_cluster = [False] * (k + 1)
    for cluster in clusters:
        has_cluster[cluster.gap] = True

    # (lower bound, constant outside the range, case, lo, hi, pinned device, pinned server,
    #  server elsewhere, prefix clusters all on the device)
    candidates: list[tuple[int, int, int, int, int, set[int], set[int], bool, bool]] = []

    def add(case: int, constant: int, server_elsewhere: bool, all_device_before: bool) -> None:
        lo = bounds[case - 1] if case > 0 else 0
        hi = bounds[case] if case < k else n - 1
        left = lo if case > 0 else None
        right = hi if case < k else None
        pinned_device = {v for v in must_device if lo <= v <= hi}
        pinned_server = {v for v in on_server if lo <= v <= hi}
        lower = constant + prefix_cheapest[hi + 1] - prefix_cheapest[lo] + rtt2
        if left is not None:
            lower += dev[left] - min(dev[left], srv[left])
            pinned_device.add(left)
        if right is not None:
            lower += srv[right] - min(dev[right], srv[right])
            pinned_server.add(right)
        # Some tensor of the range crosses when a device node has a path to a server node: from
        # `left` to `right`; from a core device node (an ancestor of `right`) in the first range;
        # from `left` to any server node in a last range of core nodes only.
        if left is not None and right is not None:
            crossing = True
        elif right is not None:
            crossing = any(core[v] for v in pinned_device)
        else:
            crossing = not has_cluster[k] and (bool(pinned_server) or not server_elsewhere)
        if crossing and lo < hi:
            lower += min(xfer[lo:hi])
        if right is None and not pinned_server:
            all_device = constant + plain_device[hi + 1] - plain_device[lo] + (rtt2 if server_elsewhere else 0)
            lower = min(lower, all_device)
        candidates.append(
            (lower, constant, case, lo, hi, pinned_device, pinned_server, server_elsewhere, all_device_before)
        )

    if last_core_device < bounds[0]:
        add(0, suffix_server[bounds[0] + 1], True, False)
    for case in range(1, k):
        left, right = bounds[case - 1], bounds[case]
        if first_core_server > left and last_core_device < right:
            add(case, prefix_device[left] + suffix_server[right + 1], True, False)
    last = bounds[-1]
    if first_core_server > last:
        if first_server > last:
            add(k, plain_device[last], False, True)
        if prefix_device[last] < plain_device[last] or first_server < last:
            add(k, prefix_device[last], True, False)  # some cluster before `last` uses the server

    candidates.sort(key=lambda candidate: candidate[0])
    best_value, best = -1, None
    for candidate in candidates:
        lower, constant, case, lo, hi, pinned_device, pinned_server, server_elsewhere, _ = candidate
        if best_value >= 0 and lower >= best_value:
            break
        if constant >= INFEASIBLE:
            continue
        value, device = solve_range(costs, lo, hi, pinned_device, pinned_server, server_elsewhere, True)
        if best_value < 0 or constant + value < best_value:
            best_value, best = constant + value, (candidate, device)
    assert best is not None  # resolve_pins guarantees a feasible placement, which lies in some case
    (_, _, case, lo, hi, _, _, _, all_device_before), device = best
    placed = [order[v] for v in device]
    placed += [order[v] for v in range(lo) if core[v]]
    for cluster in clusters:
        if cluster.gap < case:
            placed += cluster.nodes if all_device_before else cluster.on_device[1]
        elif cluster.gap > case:
            placed += cluster.on_server[1]
    return sorted(placed)


# ----------------------------------------------------------------------------------------------
# Public planners.


def plan(
    profile: Profile,
    method: str = "blockwise",
    pin_device: Iterable[str] = (),
    pin_server: Iterable[str] = (),
) -> Plan:
    """Plan a placement of minimum predicted step time.

    Parameters:
        profile: the cost graph and link.
        method: ``"blockwise"`` (exact, fast: series decomposition at boundaries), ``"full"``
            (exact: one min cut of the whole graph), ``"exhaustive"`` (exact, brute force, small
            graphs only) or a baseline: ``"device_only"``, ``"server_only"``, ``"best_layerwise"``.
        pin_device: names of nodes that must run on the device (exact methods only).
        pin_server: names of nodes that must run on the server (exact methods only).

    Returns:
        A :class:`Plan`. Both exact methods reach the same optimal ``T`` (up to the picosecond
        rounding of the costs); when several placements tie, either may be returned.

    Raises:
        PlanningError: an unknown method or pinned name, pins on a baseline, or pins that no
            feasible placement satisfies (the message names the conflicting nodes).

    Examples:
        >>> from lightning_split.planning.profile import Link, chain_profile
        >>> profile = chain_profile([1.0, 8.0], [1.0, 1.0], [10, 10], Link(10.0, 10.0), input_bytes=100)
        >>> result = plan(profile)
        >>> result.device, result.cut, result.predicted_step_s
        (('x', 'n0'), ('n0',), 6.0)
    """
    started = time.perf_counter()
    if method == "exhaustive":
        return exhaustive(profile, pin_device, pin_server)
    if method in ("device_only", "server_only", "best_layerwise"):
        if as_names(pin_device) or as_names(pin_server):
            raise PlanningError(f"pins apply to the blockwise, full and exhaustive methods, not to {method}")
        return {"device_only": device_only, "server_only": server_only, "best_layerwise": best_layerwise}[method](
            profile
        )
    if method not in ("blockwise", "full"):
        raise PlanningError(f"unknown planning method {method!r}; expected one of {', '.join(METHODS)}")
    costs = CostGraph(profile)
    on_device, on_server = resolve_pins(costs, pin_device, pin_server)
    if costs.n == 0:
        device: list[int] = []
    elif method == "full":
        device = full(costs, on_device, on_server)
    else:
        device = _blockwise(costs, on_device, on_server)
    return make_plan(profile, method, device, started, costs.graph)


def device_only(profile: Profile) -> Plan:
    """Baseline: every node on the device (no network at all)."""
    started = time.perf_counter()
    return make_plan(profile, "device_only", range(len(profile.nodes)), started)


def server_only(profile: Profile) -> Plan:
    """Baseline: only the input nodes on the device; the inputs are uploaded and all compute is remote."""
    started = time.perf_counter()
    return make_plan(
        profile, "server_only", [i for i, node in enumerate(profile.nodes) if node.kind == "input"], started
    )


def best_layerwise(profile: Profile) -> Plan:
    """Baseline: the best single split point of the profile order (``D`` = the first ``k`` nodes).

    This is the classic partition of a chain; on a DAG whose graph order interleaves branches it
    can be strictly worse than the optimum, since ``D`` must be a prefix of the order. ``k``
    ranges over the prefixes that hold every input node; all ``T`` are computed in one pass
    (each tensor crosses for the ``k`` between its producer and its last consumer).
    """
    started = time.perf_counter()
    nodes = profile.nodes
    n = len(nodes)
    position, inputs = graph = graph_positions(profile)
    per_byte = profile.link.seconds_per_byte_round_trip
    last_consumer = list(range(n))
    for w, sources in enumerate(inputs):
        for u in sources:
            last_consumer[u] = w
    # delta[k]: change of the bytes crossing when the prefix grows to k nodes (u crosses for k in u+1..last).
    delta = [0] * (n + 2)
    for u, node in enumerate(nodes):
        if last_consumer[u] > u:
            delta[u + 1] += node.out_bytes
            delta[last_consumer[u] + 1] -= node.out_bytes
    returned = [0] * (n + 1)
    for v in {position[name] for name in profile.outputs}:
        returned[v] = nodes[v].out_bytes
    server_tail = [0.0] * (n + 1)
    for v in range(n - 1, -1, -1):
        server_tail[v] = server_tail[v + 1] + nodes[v].server_s
        returned[v] += returned[v + 1]
    first_k = max((i + 1 for i, node in enumerate(nodes) if node.kind == "input"), default=0)
    device_head = sum(node.device_s for node in nodes[:first_k])
    crossing = sum(delta[: first_k + 1])
    best_k, best_total = n, math.inf
    for k in range(first_k, n + 1):
        if k > first_k:
            device_head += nodes[k - 1].device_s
            crossing += delta[k]
        total = device_head + server_tail[k] + (crossing + returned[k]) * per_byte
        if k < n:
            total += 2.0 * profile.link.rtt_s
        if total < best_total:
            best_k, best_total = k, total
    return make_plan(profile, "best_layerwise", range(best_k), started, graph)


def baselines(profile: Profile) -> dict[str, float]:
    """Predicted step times of the three baselines: ``device_only``, ``server_only``, ``best_layerwise``."""
    return {
        "device_only": device_only(profile).predicted_step_s,
        "server_only": server_only(profile).predicted_step_s,
        "best_layerwise": best_layerwise(profile).predicted_step_s,
    }
