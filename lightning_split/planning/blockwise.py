"""The ``"blockwise"`` method: the exact optimum by series decomposition at the boundary nodes.

The boundaries (:mod:`~lightning_split.planning.boundaries`) form a chain ``b1 < ... < bk`` in
graph order, and ``D`` is closed under ancestors, so ``D`` holds a prefix ``b1..bi`` of that
chain: the nodes up to ``bi`` are all on the device (its ancestors), those from ``b(i+1)`` all
on the server (its descendants), and only the segment strictly between them is free. Because no
edge skips a boundary, the nodes before ``bi`` pay no transfer (their consumers are at or before
``bi``), the nodes after ``b(i+1)`` pay their server time and return trips only, and every term
that depends on the free nodes involves only ``{bi} + segment + {b(i+1)}``. So the best
placement of case ``i`` costs a prefix device sum, plus a suffix server sum, plus ``2 rtt``,
plus the min cut of the small graph of that range with ``bi`` pinned to the device and
``b(i+1)`` to the server (:func:`~lightning_split.planning.ranges.solve_range`). Two more cases
complete the cover of all feasible placements: ``b1`` on the server (the range before ``b1`` is
free, inputs pinned to the device) and ``bk`` on the device (the range after it is free;
all-device included, rtt handled as in ``"full"``). The minimum over the cases is the global
optimum, exactly, since each case is solved exactly in the same integer picoseconds as
``"full"``. A graph without boundaries is solved by one min cut of the whole graph.

Pins: a server pin at or before ``bi``, or a device pin (or input) at or after ``b(i+1)``, rules
case ``i`` out; pins inside the range become pins of its subproblem. Conflicting pins are
rejected before solving with the same :class:`~lightning_split.planning.costmodel.PlanningError`
as ``"full"``.

Speed: prefix and suffix sums are computed once (:class:`_Sums`). Cases are tried in increasing
order of a lower bound (prefix + suffix + ``min(device, server)`` per free node + the cheapest
transfer of the range, which some tensor must pay when the range has a node on each side) and
the search stops when the bound reaches the best value found (:func:`_best_case`).

Side nodes. The decomposition is that of the core (:mod:`~lightning_split.planning.clusters`),
at its boundaries that no cluster blocks; so in case ``i`` a cluster attached to gap ``j``:

- ``j < i``: every core node it touches is on the device, and so are the core consumers of its
  ``F`` (no core edge skips ``b(j+1)``), so a tensor of ``F`` crosses only for the cluster. Its
  best placement given that, its value ``on_device``, is independent of every other choice.
- ``j > i``: every core node it touches is at or after ``b(i+1)``, hence a descendant of it,
  hence on the server. Its best placement given that is ``on_server``, again independent (core
  nodes on the server pay no transfer). A cluster touching no core node is *floating*, attached
  to the last gap; its ``on_server`` is its best placement outright.
- ``j = i``: each of its nodes has all inputs and consumers in ``{bi} + segment + clusters of gap
  i + {b(i+1)}``, so the range's min cut includes it exactly.

Each cluster's two values are found once and summed into the prefix and suffix sums like a
node's device and server time. The nodes are renumbered so that every range is contiguous (gap
``j``'s core nodes and clusters in graph order, between ``bj`` and ``b(j+1)``:
:func:`_layout`), which keeps the range solver unchanged. The rtt term: in every case but the
last, ``b(i+1)`` is on the server, so it is paid whatever the clusters do. In the last case it
splits in two: every cluster before ``bk`` all on the device (then the range decides the rtt, as
before), or the clusters at their ``on_device`` value plus the rtt, which is exact when some
cluster node is on the server and otherwise an upper bound on the placement it returns, never
below the optimum. Pins on cluster nodes enter their two values (infinite when the pins cannot
hold there, which rules the case out) or the range's cut. So the minimum over the cases is again
the global optimum, exactly. The random-DAG tests hang dead-end chains, branches spanning
several blocks, unused inputs and constants off the middle of the graph and compare both
methods with :func:`~lightning_split.planning.exhaustive.exhaustive`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import accumulate
from operator import attrgetter

from lightning_split.planning.boundaries import boundary_positions
from lightning_split.planning.clusters import Cluster, Placement, cluster_values, core_mask, find_clusters
from lightning_split.planning.cutgraph import INFEASIBLE, CostGraph
from lightning_split.planning.ranges import is_compiled, solve_range, solve_ranges

__all__ = ["blockwise"]


def blockwise(costs: CostGraph, on_device: set[int], on_server: set[int]) -> list[int]:
    """Device positions of an optimal placement by series decomposition at the usable boundaries.

    ``on_device`` and ``on_server`` are the pins, as :func:`~lightning_split.planning.cutgraph.resolve_pins`
    returns them (checked: some feasible placement satisfies them).
    """
    must_device = costs.with_inputs(on_device)
    layout = _layout(costs, must_device, on_server)
    if layout is None:  # no boundary: one min cut of the whole graph
        return solve_range(costs, 0, costs.n - 1, must_device, on_server, False, True)[1]
    case, device = _best_case(layout, _cases(layout, _Sums.of(layout)))
    return _placement(layout, case, device)


@dataclass(frozen=True)
class _Attached:
    """A cluster attached to a gap between boundaries, with its two values (``None``: ruled out by the pins).

    ``last`` is the renumbered position of its last node, where the sums count its value.
    """

    cluster: Cluster
    gap: int
    on_device: Placement | None
    on_server: Placement | None
    last: int


@dataclass(frozen=True)
class _Layout:
    """The series decomposition of a cost graph with its clusters, renumbered (see the module docstring).

    ``costs`` is the graph renumbered so that each range between consecutive usable boundaries is
    contiguous: gap ``g`` (0 before the first boundary, ``g`` after boundary ``g``) holds the core
    nodes strictly between its boundaries and the clusters attached to it, in graph order;
    floating clusters (touching no core node) join the last gap. ``order[p]`` is the original
    position of new position ``p``; ``bounds``, ``core``, ``must_device`` and ``on_server`` are
    in new positions.
    """

    costs: CostGraph
    order: list[int]
    bounds: list[int]
    core: list[bool]
    clusters: list[_Attached]
    must_device: set[int]
    on_server: set[int]


def _layout(costs: CostGraph, must_device: set[int], on_server: set[int]) -> _Layout | None:
    """The decomposition of ``costs`` at its usable boundaries; ``None`` if there is none."""
    core = core_mask(costs)
    if all(core):  # the common case: no side nodes, the boundaries of the whole graph
        bounds = boundary_positions(costs)
        if not bounds:
            return None
        return _Layout(costs, list(range(costs.n)), bounds, core, [], must_device, on_server)
    clusters = find_clusters(costs, core)
    bounds = boundary_positions(costs, core, clusters)
    if not bounds:
        return None
    gaps = [_gap(bounds, cluster) for cluster in clusters]
    order = _order(costs, core, bounds, clusters, gaps)
    rank = {old: new for new, old in enumerate(order)}
    attached = [
        _Attached(cluster, gap, *cluster_values(costs, cluster, must_device, on_server), last=rank[cluster.nodes[-1]])
        for cluster, gap in zip(clusters, gaps)
    ]
    return _Layout(
        costs=costs.reordered(order),
        order=order,
        bounds=[rank[b] for b in bounds],
        core=[core[v] for v in order],
        clusters=attached,
        must_device={rank[v] for v in must_device},
        on_server={rank[v] for v in on_server},
    )


def _gap(bounds: list[int], cluster: Cluster) -> int:
    """The gap a cluster is attached to: the first whose range holds its ``F`` and ``G`` (the last if floating)."""
    touched = cluster.touched
    if not touched:
        return len(bounds)
    lo = min(touched)
    after = bisect.bisect_right(bounds, lo)
    on_bound = after > 0 and bounds[after - 1] == lo
    return after - (on_bound and lo in cluster.feeds)


def _order(
    costs: CostGraph, core: list[bool], bounds: list[int], clusters: list[Cluster], gaps: list[int]
) -> list[int]:
    """The renumbering of :class:`_Layout`: for each gap its nodes in graph order, then the next boundary."""
    is_bound = set(bounds)
    members: list[list[int]] = [[] for _ in range(len(bounds) + 1)]
    for v in range(costs.n):
        if core[v] and v not in is_bound:
            members[bisect.bisect_right(bounds, v)].append(v)
    for cluster, gap in zip(clusters, gaps):
        members[gap].extend(cluster.nodes)
    order = sorted(members[0])
    for b, gap_members in zip(bounds, members[1:]):
        order.append(b)
        order.extend(sorted(gap_members))
    return order


@dataclass(frozen=True)
class _Sums:
    """Prefix and suffix sums over the renumbered positions: ``x[p]`` sums those before ``p`` (suffixes: from ``p``).

    ``plain_device``: every node on the device. ``prefix_device`` / ``suffix_server``: core nodes on
    one side, each cluster at its value for that side (:data:`INFEASIBLE` if ruled out), counted
    at its last node. ``prefix_cheapest``: each node on its cheaper side.
    """

    plain_device: list[int]
    prefix_device: list[int]
    prefix_cheapest: list[int]
    suffix_server: list[int]

    @classmethod
    def of(cls, layout: _Layout) -> _Sums:
        costs = layout.costs
        plain_device = [0, *accumulate(costs.dev)]
        if not layout.clusters:  # every node is core
            prefix_device, server_lumps = plain_device, costs.srv
        else:
            device_lumps = [d if here else 0 for d, here in zip(costs.dev, layout.core)]
            server_lumps = [s if here else 0 for s, here in zip(costs.srv, layout.core)]
            for attached in layout.clusters:
                device_lumps[attached.last] = _value(attached.on_device)
                server_lumps[attached.last] = _value(attached.on_server)
            prefix_device = [0, *accumulate(device_lumps)]
        suffix_server = [*accumulate(reversed(server_lumps))][::-1]
        suffix_server.append(0)
        prefix_cheapest = [0, *accumulate(map(min, costs.dev, costs.srv))]
        return cls(plain_device, prefix_device, prefix_cheapest, suffix_server)


def _value(placement: Placement | None) -> int:
    return INFEASIBLE if placement is None else placement[0]


@dataclass(frozen=True)
class _Case:
    """One case of the series decomposition: the range of :func:`_range` is free, the rest is decided.

    Attributes:
        index: ``i`` of the module docstring: boundaries ``1..i`` on the device, the rest on the server.
        lower: a lower bound on the case's best total, to try the cases in order and stop early.
        constant: the cost of the nodes outside the range (:data:`INFEASIBLE`: ruled out).
        server_elsewhere: some node outside the range is on the server (the rtt is paid anyway).
            Only the last case can do without, by putting every cluster before the range all on
            the device: see :attr:`all_device_before`.
    """

    index: int
    lower: int
    constant: int
    server_elsewhere: bool

    @property
    def all_device_before(self) -> bool:
        """Every cluster before the range is all on the device (else each is at its ``on_device`` value)."""
        return not self.server_elsewhere


def _cases(layout: _Layout, sums: _Sums) -> list[_Case]:
    """Every case the pins allow, each with its constant and lower bound, sorted by lower bound (stable)."""
    bounds, core, n, k = layout.bounds, layout.core, layout.costs.n, len(layout.bounds)
    last_core_device = max((v for v in layout.must_device if core[v]), default=-1)
    first_core_server = min((v for v in layout.on_server if core[v]), default=n)
    first_server = min(layout.on_server, default=n)
    cases = []
    if last_core_device < bounds[0]:
        cases.append(_case(layout, sums, 0, sums.suffix_server[bounds[0] + 1], True))
    for index in range(1, k):
        left, right = bounds[index - 1], bounds[index]
        if first_core_server > left and last_core_device < right:
            constant = sums.prefix_device[left] + sums.suffix_server[right + 1]
            cases.append(_case(layout, sums, index, constant, True))
    last = bounds[-1]
    if first_core_server > last:
        if first_server > last:
            cases.append(_case(layout, sums, k, sums.plain_device[last], False))
        if sums.prefix_device[last] < sums.plain_device[last] or first_server < last:
            # some cluster before `last` uses the server
            cases.append(_case(layout, sums, k, sums.prefix_device[last], True))
    cases.sort(key=attrgetter("lower"))
    return cases


def _case(layout: _Layout, sums: _Sums, index: int, constant: int, server_elsewhere: bool) -> _Case:
    """Case ``index`` with the cost ``constant`` outside its range, and its lower bound."""
    costs, k = layout.costs, len(layout.bounds)
    dev, srv = costs.dev, costs.srv
    lo, hi = _range(layout, index)
    lower = constant + sums.prefix_cheapest[hi + 1] - sums.prefix_cheapest[lo] + costs.rtt2
    if index > 0:  # the left boundary is on the device
        lower += dev[lo] - min(dev[lo], srv[lo])
    if index < k:  # the right boundary is on the server
        lower += srv[hi] - min(dev[hi], srv[hi])
    # Some tensor of the range crosses when a device node has a path to a server node: from
    # the left boundary to the right one; from a core device node (an ancestor of the right
    # boundary) in the first range; from the left boundary to any server node in a last range
    # of core nodes only. When the left boundary feeds the right one directly (a DenseNet
    # block's input reaches its closing concatenation), that tensor is one that crosses.
    server_pinned = index == k and any(lo <= v <= hi for v in layout.on_server)
    if 0 < index < k:
        crossing = True
    elif index < k:
        crossing = any(layout.core[v] for v in layout.must_device if lo <= v <= hi)
    else:
        last_gap_has_cluster = any(attached.gap == k for attached in layout.clusters)
        crossing = not last_gap_has_cluster and (server_pinned or not server_elsewhere)
    if crossing and lo < hi:
        cheapest = min(costs.xfer[lo:hi])
        if 0 < index < k and hi in costs.consumers[lo]:  # the left boundary's tensor feeds the right one: it crosses
            cheapest = max(cheapest, costs.xfer[lo])
        lower += cheapest
    if index == k and not server_pinned:  # all-device may be the best, and is cheaper than the bound
        rtt = costs.rtt2 if server_elsewhere else 0
        lower = min(lower, constant + sums.plain_device[hi + 1] - sums.plain_device[lo] + rtt)
    return _Case(index, lower, constant, server_elsewhere)


def _range(layout: _Layout, index: int) -> tuple[int, int]:
    """First and last positions of the free range of case ``index``: ``bi`` (or 0) to ``b(i+1)`` (or the last node)."""
    bounds = layout.bounds
    return bounds[index - 1] if index > 0 else 0, bounds[index] if index < len(bounds) else layout.costs.n - 1


def _pins(layout: _Layout, case: _Case) -> tuple[set[int], set[int]]:
    """The nodes of the case's range pinned to the device (pins, inputs, the left boundary) and to the server."""
    lo, hi = _range(layout, case.index)
    on_device = {v for v in layout.must_device if lo <= v <= hi}
    on_server = {v for v in layout.on_server if lo <= v <= hi}
    if case.index > 0:
        on_device.add(lo)
    if case.index < len(layout.bounds):
        on_server.add(hi)
    return on_device, on_server


def _best_case(layout: _Layout, cases: list[_Case]) -> tuple[_Case, list[int]]:
    """The case of least total and its range's device positions, trying ``cases`` in order until the bound stops it.

    Ranges for the compiled engine wait until the cheap ones (chains, small segments) have set
    the best value so far; those whose bound is still below it are then cut in one call
    (:func:`~lightning_split.planning.ranges.solve_ranges`), which drops after the engine's first
    phase the ranges whose totals cannot beat the best or another's (the role that cutting the
    likeliest range first used to play, at one compiled call instead of two). A case left out
    has a bound at or above a value found, or above another case's total, so the optimum is kept.
    """
    best: list[tuple[int, _Case, list[int]]] = []
    for case in cases:  # cheap feasible placements first: one that meets a bound ends the search early
        if case.constant < INFEASIBLE:
            for value, device in _trivial_placements(layout, case):
                _keep(best, case.constant + value, case, device)
    deferred: list[_Case] = []
    for case in cases:
        if best and case.lower >= best[0][0]:
            break
        if case.constant >= INFEASIBLE:
            continue
        lo, hi = _range(layout, case.index)
        if is_compiled(layout.costs, lo, hi):
            deferred.append(case)
            continue
        value, device = solve_range(layout.costs, lo, hi, *_pins(layout, case), case.server_elsewhere, True)
        _keep(best, case.constant + value, case, device)
    batch = [case for case in deferred if not best or case.lower < best[0][0]]
    requests = [(*_range(layout, case.index), *_pins(layout, case), case.server_elsewhere) for case in batch]
    constants = [case.constant for case in batch]
    ceiling = best[0][0] if best else None
    for case, solved in zip(batch, solve_ranges(layout.costs, requests, constants, ceiling)):
        if solved is not None:  # None: screened out, its total cannot beat the best
            _keep(best, case.constant + solved[0], case, solved[1])
    assert best  # resolve_pins guarantees a feasible placement, which lies in some case
    return best[0][1], best[0][2]


def _trivial_placements(layout: _Layout, case: _Case) -> list[tuple[int, list[int]]]:
    """Two feasible placements of a middle case's range, with their values (rtt included): upper bounds.

    With the left boundary ``lo`` on the device and the right one ``hi`` on the server: only
    ``lo`` on the device (its tensor crosses), or all but ``hi`` (the tensors ``hi`` consumes
    cross; no edge skips ``lo``, so they all come from the range). Each is feasible unless a pin
    or an input in the range says otherwise. At slow links the first often meets the case's
    lower bound (DenseNet-201 at 15-20 Mbit/s), and then no range is cut at all.
    """
    if not 0 < case.index < len(layout.bounds):
        return []
    costs, (lo, hi) = layout.costs, _range(layout, case.index)
    on_device, on_server = _pins(layout, case)
    found = []
    if on_device == {lo}:
        found.append((costs.dev[lo] + sum(costs.srv[lo + 1 : hi + 1]) + costs.xfer[lo] + costs.rtt2, [lo]))
    if on_server == {hi}:
        crossing = sum(costs.xfer[u] for u in costs.inputs[hi])
        found.append((sum(costs.dev[lo:hi]) + costs.srv[hi] + crossing + costs.rtt2, list(range(lo, hi))))
    return found


def _keep(best: list[tuple[int, _Case, list[int]]], total: int, case: _Case, device: list[int]) -> None:
    """Make ``best`` hold ``(total, case, device)`` if it is empty or ``total`` is lower than its value."""
    if not best or total < best[0][0]:
        best[:] = [(total, case, device)]


def _placement(layout: _Layout, case: _Case, device: list[int]) -> list[int]:
    """Original device positions of the best placement of ``case``, given its range's device positions."""
    order, core = layout.order, layout.core
    lo, _ = _range(layout, case.index)
    placed = [order[v] for v in device]
    placed += [order[v] for v in range(lo) if core[v]]  # the core nodes before the range
    for attached in layout.clusters:
        if attached.gap < case.index:
            placed += attached.cluster.nodes if case.all_device_before else attached.on_device[1]
        elif attached.gap > case.index:
            placed += attached.on_server[1]
    return sorted(placed)
