"""The exact minimum of ``T_M`` by enumerating the feasible placements, between boundaries.

``T_M`` takes a max() over the stages of each phase, so unlike the sequential ``T`` it is not
one min cut. It is a function of a few sums over the placement (the device and server shares,
the crossing and returned bytes, the footprint), and the feasible placements are the downsets
of the graph (device sets closed under ancestors) that contain the positions the constraints
put on the device, avoid those they put on the server and fit the budget. This module visits
them all, in a search that keeps those sums up to date in O(degree) per step.

Condensation at boundaries. A node ``b`` is a *boundary* when every other node is an ancestor
or a descendant of ``b`` and no edge runs from a strict ancestor to a strict descendant
(:func:`boundary_positions`, the same nodes as
:func:`lightning_split.planning.planner.boundaries`). For consecutive boundaries
``b(i) < b(i+1)`` (with ``b(0)`` before the first node and ``b(k+1)`` after the last), every
feasible device set is, for exactly one ``i``, all nodes up to ``b(i)``, plus a downset of the
segment strictly between, with ``b(i+1)`` and everything after it on the server: ``b(i)`` on
the device pulls its ancestors (all earlier nodes) with it, ``b(i+1)`` on the server its
descendants. Since no edge skips a boundary, only ``b(i)`` and the segment have consumers on
both sides, so each case is a search over the segment alone, started from prefix sums. On a
chain of residual blocks the number of placements is the sum of the blocks' few downsets.

The search. Within a case the device set grows from the nodes the case and the constraints
fix. A node is *addable* when its inputs are all on the device; the search takes one addable
node ``x`` and branches: ``x`` joins the device (its consumers may become addable) or it never
does (so neither do its descendants: they never become addable). Both branches hold at least
one placement, so the search tree has fewer inner nodes than leaves, and each leaf is a
distinct placement. A node that would exceed the budget is never added (footprints are >= 0).

Pruning. ``T_M`` does not decrease when a stage time grows (``pipe_M`` is monotone). In a
subtree the device shares only grow, and the nodes from ``b(i+1)`` on and those excluded on
the way stay on the server, so ``T_M`` with the current device shares, the server shares and
returned outputs of those nodes and no transfer is a lower bound on the subtree. Cases are
visited in increasing order of that bound at their start, and subtrees and cases whose bound
reaches the best value are skipped. The best value starts at the best prefix of the graph
order (every prefix is a downset; all are evaluated in one linear pass), which on traced
transformers (side nodes, hence few boundaries) cuts the search by an order of magnitude.

The number of placements grows exponentially with the width of a segment (parallel
branches); past ``cap`` evaluated placements the search stops and reports that it is
incomplete, and :mod:`~lightning_split.planning.lagrangian` bounds the rest.
"""

from __future__ import annotations

import bisect
import math
import operator
from dataclasses import dataclass

from lightning_split.planning.constraints import Constraints
from lightning_split.planning.pipelined import Objective, StageCosts

__all__ = ["SearchResult", "boundary_positions", "search_placements"]


@dataclass(frozen=True)
class SearchResult:
    """The best placement a search found.

    Attributes:
        value: its ``T_M`` (``inf`` when none was found).
        device: its device positions in increasing order, or ``None``.
        evaluated: the number of placements whose ``T_M`` was computed.
        complete: whether every feasible placement was covered (then ``value`` is the optimum).
    """

    value: float
    device: tuple[int, ...] | None
    evaluated: int
    complete: bool


def boundary_positions(costs: StageCosts) -> list[int]:
    """Positions of the boundary nodes in graph order, in O(nodes + edges).

    In graph order, position ``p`` is a boundary iff (a) no edge ``(u, w)`` has ``u < p < w``,
    (b) every node before ``p`` has a consumer and (c) every node after ``p`` has an input:
    the nodes before ``p`` are then exactly its ancestors and those after its descendants
    (the proof is in ``lightning_split.planning.planner``). (a) is a sweep over a difference
    array of open edges; (b) and (c) compare ``p`` with the first node without consumers and
    the last node without inputs.
    """
    n = costs.n
    opened = [0] * (n + 1)
    last_source, first_sink = -1, n
    for w in range(n):
        if not costs.inputs[w]:
            last_source = w
        for u in costs.inputs[w]:
            opened[u + 1] += 1
            opened[w] -= 1
        if first_sink == n and not costs.consumers[w]:
            first_sink = w
    result, spanning = [], 0
    for p in range(n):
        spanning += opened[p]
        if spanning == 0 and last_source <= p <= first_sink:
            result.append(p)
    return result


@dataclass(frozen=True)
class _Case:
    """Positions ``0..prefix_end`` on the device, ``stop..`` on the server, the rest searched.

    ``tail``: the server shares (forward, backward) and returned bytes of the nodes from
    ``stop`` on, which are on the server in every placement of the case.
    """

    prefix_end: int
    stop: int
    tail: tuple[float, float, float]
    bound: float


class _Search:
    """The state of the search: the sums of the current placement and the graph counters.

    ``sums``: the device sums of (forward, backward, server forward, server backward, returned
    bytes, footprint); ``known``: the server forward and backward shares and returned bytes of
    the nodes known to stay on the server (the case's tail and the excluded nodes), for the
    bound. ``missing[v]``: inputs of ``v`` not on the device; ``outside[u]``: consumers of ``u``
    not on the device (``u`` crosses iff it is on the device and this is > 0). Both are kept
    for the nodes of the current case only (its boundary and segment), the only ones whose
    status can change.
    """

    def __init__(self, costs: StageCosts, constraints: Constraints, objective: Objective, cap: int) -> None:
        self.costs, self.objective, self.cap = costs, objective, cap
        self.budget = math.inf if constraints.budget is None else constraints.budget
        n = costs.n
        self.missing, self.outside = [0] * n, [0] * n
        self.banned = [v in constraints.must_server for v in range(n)]
        self.must_server = constraints.must_server
        self.forced = sorted(constraints.must_device)
        columns = (costs.device_fwd, costs.device_bwd, costs.server_fwd, costs.server_bwd, costs.returned, costs.mem)
        self.vectors = list(zip(*columns))
        self.prefix = [_prefix_sums(values) for values in columns]
        self.totals = tuple(values[n] for values in self.prefix)
        self.sums: tuple[float, ...] = (0.0,) * 6
        self.known: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.crossed, self.count = 0, 0
        self.members: list[int] = []
        self.best_value, self.best_device = math.inf, None
        self.evaluated = 0

    def seed_with_prefixes(self) -> None:
        """Start from the best feasible prefix of the graph order (a downset, as every prefix is).

        All prefixes are evaluated in one pass, as the sequential planner's ``best_layerwise``
        baseline does: a tensor crosses for the prefixes that end between its producer and its
        last consumer. A good first value lets the bounds prune from the start.
        """
        costs, n, prefix, totals = self.costs, self.costs.n, self.prefix, self.totals
        delta = [0] * (n + 2)
        for u, consumers in enumerate(costs.consumers):
            if consumers:
                delta[u + 1] += costs.out_bytes[u]
                delta[max(consumers) + 1] -= costs.out_bytes[u]
        first = self.forced[-1] + 1 if self.forced else 0
        crossed = sum(delta[: first + 1])
        for k in range(first, min(self.must_server, default=n) + 1):
            crossed += delta[k] if k > first else 0
            if prefix[5][k] > self.budget:
                break
            value = self.objective.total(
                prefix[0][k], prefix[1][k], totals[2] - prefix[2][k], totals[3] - prefix[3][k], crossed,
                totals[4] - prefix[4][k], k < n,
            )  # fmt: skip
            if value < self.best_value:
                self.best_value, self.best_device = value, tuple(range(k))

    def cases(self) -> list[_Case]:
        """The feasible cases, in increasing order of their lower bound."""
        n, prefix = self.costs.n, self.prefix
        first_server = min(self.must_server, default=n)
        last_device = self.forced[-1] if self.forced else -1
        cuts = boundary_positions(self.costs)
        result = []
        for prefix_end, stop in zip([-1, *cuts], [*cuts, n]):
            if first_server <= prefix_end or last_device >= stop or prefix[5][prefix_end + 1] > self.budget:
                continue
            tail = (prefix[2][n] - prefix[2][stop], prefix[3][n] - prefix[3][stop], prefix[4][n] - prefix[4][stop])
            bound = self._bound(prefix[0][prefix_end + 1], prefix[1][prefix_end + 1], tail, stop < n)
            result.append(_Case(prefix_end, stop, tail, bound))
        return sorted(result, key=lambda case: case.bound)

    def _bound(self, device_fwd: float, device_bwd: float, known: tuple[float, float, float], some: bool) -> float:
        """A lower bound: ``T_M`` with these device shares, only the known server work, nothing crossing."""
        return self.objective.bound(device_fwd, device_bwd, known[0], known[1], 0, known[2], some)

    def start(self, case: _Case) -> list[int] | None:
        """Set the state to the case's smallest placement; return the addable nodes (``None``: over budget)."""
        costs, lo, stop = self.costs, case.prefix_end, case.stop
        self.sums = tuple(values[lo + 1] for values in self.prefix)
        self.known, self.count, self.members = case.tail, lo + 1, []
        self.crossed = costs.out_bytes[lo] if lo >= 0 and costs.consumers[lo] else 0
        if lo >= 0:
            self.outside[lo] = len(costs.consumers[lo])
        addable = []
        for v in range(lo + 1, min(stop + 1, costs.n)):
            self.missing[v] = sum(1 for u in costs.inputs[v] if u > lo)
            self.outside[v] = len(costs.consumers[v])
            if v < stop and self.missing[v] == 0 and not self.banned[v]:
                addable.append(v)
        for v in self.forced[bisect.bisect_right(self.forced, lo) :]:
            addable.remove(v)  # a forced node's inputs are on the device already: it is addable
            self.include(v, addable)
        return addable if self.sums[5] <= self.budget else None

    def include(self, x: int, addable: list[int]) -> tuple[tuple[float, ...], int, int]:
        """Put ``x`` on the device; return what :meth:`undo` restores and how many nodes became addable."""
        costs = self.costs
        saved = (self.sums, self.crossed)
        self.sums = tuple(map(operator.add, self.sums, self.vectors[x]))
        self.count += 1
        self.members.append(x)
        consumers = costs.consumers[x]
        if consumers:
            self.crossed += costs.out_bytes[x]
        outside = self.outside
        for u in costs.inputs[x]:
            outside[u] -= 1
            if not outside[u]:
                self.crossed -= costs.out_bytes[u]
        added = 0
        missing, banned = self.missing, self.banned
        for w in consumers:
            missing[w] -= 1
            if not missing[w] and not banned[w]:
                addable.append(w)
                added += 1
        return (*saved, added)

    def undo(self, x: int, sums: tuple[float, ...], crossed: int, added: int, addable: list[int]) -> None:
        """Take ``x`` off the device again (the inverse of :meth:`include`)."""
        if added:
            del addable[-added:]
        for w in self.costs.consumers[x]:
            self.missing[w] += 1
        for u in self.costs.inputs[x]:
            self.outside[u] += 1
        self.sums, self.crossed = sums, crossed
        self.count -= 1
        self.members.pop()

    def leaf(self, case: _Case) -> bool:
        """Evaluate the current placement; ``False`` when the cap is reached (nothing evaluated)."""
        if self.evaluated >= self.cap:
            return False
        self.evaluated += 1
        (df, db, sf, sb, returned, _), totals = self.sums, self.totals
        some = self.count < self.costs.n
        value = self.objective.total(df, db, totals[2] - sf, totals[3] - sb, self.crossed, totals[4] - returned, some)
        if value < self.best_value:
            self.best_value = value
            self.best_device = (*range(case.prefix_end + 1), *sorted(self.members))
        return True

    def run_case(self, case: _Case) -> bool:
        """Search every placement of a case (``False``: stopped at the cap)."""
        ban_stop = case.stop < self.costs.n and not self.banned[case.stop]
        if ban_stop:
            self.banned[case.stop] = True  # before start(): the forced nodes must not make it addable
        try:
            addable = self.start(case)
            return addable is None or self._walk(case, addable)
        finally:
            if ban_stop:
                self.banned[case.stop] = False

    def _walk(self, case: _Case, addable: list[int]) -> bool:
        # A frame is [node, (sums, crossed, added) saved by include or None once in the exclude
        # branch, the known server work before the exclusion].
        frames: list[list] = []
        some, bound = case.stop < self.costs.n, self.objective.bound
        descend = True
        while True:
            if descend:
                descend = False
                sums, known = self.sums, self.known
                if bound(sums[0], sums[1], known[0], known[1], 0, known[2], some) >= self.best_value:
                    pass  # nothing below can improve: this is _bound(), inlined
                elif not addable:
                    if not self.leaf(case):
                        return False
                else:
                    x = addable.pop()
                    fits = sums[5] + self.costs.mem[x] <= self.budget
                    frames.append([x, self.include(x, addable) if fits else None, self.known])
                    descend = True
                    if not fits:
                        self._exclude(x)
                    continue
            if not frames:
                return True
            frame = frames[-1]
            if frame[1] is not None:
                self.undo(frame[0], *frame[1], addable)
                frame[1], descend = None, True
                self._exclude(frame[0])
            else:
                self.known = frame[2]
                addable.append(frame[0])
                frames.pop()

    def _exclude(self, x: int) -> None:
        """``x`` stays on the server in this branch (its descendants too, never becoming addable)."""
        _, _, sf, sb, returned, _ = self.vectors[x]
        known = self.known
        self.known = (known[0] + sf, known[1] + sb, known[2] + returned)


def _prefix_sums(values: list[float] | list[int]) -> list[float]:
    sums = [0.0]
    for value in values:
        sums.append(sums[-1] + value)
    return sums


def search_placements(
    costs: StageCosts, constraints: Constraints, objective: Objective, cap: int = 200_000
) -> SearchResult:
    """The feasible placement of minimum ``T_M``, by enumeration (see the module docstring).

    Parameters:
        costs: the profile as arrays.
        constraints: resolved pins, private inputs and budget (see
            :func:`~lightning_split.planning.constraints.resolve`).
        objective: ``T_M`` for the chosen micro-batches, codec and link.
        cap: the most placements to evaluate before giving up on exactness.

    Returns:
        A :class:`SearchResult`; with ``complete`` its placement is optimal.
    """
    search = _Search(costs, constraints, objective, cap)
    search.seed_with_prefixes()
    complete = True
    for case in search.cases():
        if case.bound >= search.best_value:
            break
        if not search.run_case(case):
            complete = False
            break
    return SearchResult(search.best_value, search.best_device, search.evaluated, complete)
