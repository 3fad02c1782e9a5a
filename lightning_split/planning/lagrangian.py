"""A certified lower bound on the minimum of ``T_M``, and candidate placements, from min cuts.

Where enumeration is too large (:mod:`~lightning_split.planning.enumeration` stops at its cap),
the optimum is bracketed instead. ``pipe_M(t) = sum(t)/M + (1 - 1/M) max(t)`` is the maximum
over convex weights ``w`` of ``sum_i (1/M + (1 - 1/M) w_i) t_i``, so for fixed weights ``w``
(forward phase) and ``v`` (backward phase) the weighted sum ``L_wv(D)`` is at most
``T_M(D) - 2 rtt - 2 M message_s`` for every placement with a server part, and it is *linear*
in the placement: a device cost and a server cost per node, and a cost per byte of each
crossing tensor. Its minimum over the placements that satisfy the pins and private inputs is
one min s-t cut, built as the sequential planner's (``lightning_split.planning.planner``):
``s -> v`` costs the server terms, ``v -> t`` the device terms, an infinite ``w -> u`` for each
edge ``u -> w`` keeps the device set closed under ancestors, and a tensor's transfer is one
edge to an auxiliary vertex feeding its consumers, so it is paid once when any consumer is on
the server. The memory budget enters as a Lagrange multiplier ``mu >= 0``: ``mu * (mem(D) - B)``
is at most 0 on every placement that fits, and ``mu * mem(v)`` is a device cost.

So for every ``(w, v, mu)``, ``min_D L_wv(D) + mu (mem(D) - B) + 2 rtt + 2 M message_s`` is a
lower bound on ``T_M`` over the feasible placements with a server part; with ``T_M`` of the
all-device placement where that one is feasible, the smaller of the two bounds the optimum.
The weights are improved by projected supergradient ascent (Polyak steps towards the best
value found), and every cut's placement that fits the budget is evaluated exactly as a
candidate. The bound is the best over the weights tried; the gap to the best candidate is what
the optimiser reports. With ``M = 1`` and no budget the weights do not matter and the first cut
is optimal: the gap is 0.

Flows are computed on integer capacities, whose rounding the bound subtracts (half a unit per
finite edge): the weight updates use :func:`scipy.sparse.csgraph.maximum_flow` on 32-bit
capacities (units of the total capacity / 2**30, fast), and one last cut at the best weights
uses networkx's exact flow on picoseconds, as the sequential planner does, so the reported
bound carries half a picosecond of rounding per edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import numpy as np
from networkx.algorithms.flow import preflow_push
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

from lightning_split.planning.constraints import Constraints
from lightning_split.planning.pipelined import Objective, PipelinedTime, StageCosts

__all__ = ["BoundResult", "certified_bound", "closes"]

_PICOSECONDS = 1e12
_INFINITE = 2**31 - 1  # an int32 capacity above every finite cut of a _fast_cut graph
#: A gap at most this many seconds (relative, above 1 s) certifies a placement as optimal: it
#: covers the rounding of the capacities (half a picosecond per edge) with room to spare.
TOLERANCE = 1e-9


def closes(value: float, lower_bound: float) -> bool:
    """Whether a lower bound certifies ``value`` as the optimum (up to :data:`TOLERANCE`)."""
    return value - lower_bound <= TOLERANCE * max(1.0, abs(value))


@dataclass(frozen=True)
class BoundResult:
    """A lower bound on the optimum and the best placement found.

    Attributes:
        lower_bound: no feasible placement has a smaller ``T_M``.
        value: ``T_M`` of ``device`` (``inf`` when no candidate fit the budget).
        device: positions of the best placement found, or ``None``.
        cuts: the number of min cuts solved.
    """

    lower_bound: float
    value: float
    device: tuple[int, ...] | None
    cuts: int


_Edge = tuple[int, int, "float | None"]  # (from, to, capacity in seconds; None: infinite)


@dataclass(frozen=True)
class _CutGraph:
    """A directed graph with capacities: vertices ``0..vertices-1``, the first ``n`` the nodes."""

    vertices: int
    source: int
    sink: int
    edges: list[_Edge]

    @property
    def finite_edges(self) -> int:
        return sum(1 for edge in self.edges if edge[2] is not None)


def _cut_graph(
    costs: StageCosts, constraints: Constraints, objective: Objective, weights: list[float], memory_weight: float
) -> _CutGraph:
    """The cut graph of the weighted linear objective (the module docstring says how it is built).

    Vertices: the nodes' positions, then the source ``n`` (device side), the sink ``n + 1``
    and one auxiliary vertex per tensor with several consumers. ``weights`` are the eight
    coefficients of the stages: forward (device, upload, server, download), then backward
    (upload, server, download, device).
    """
    fd, fu, fs, fo, bu, bs, bo, bd = weights
    per_crossing_byte = fu * objective.up_per_byte + bo * objective.down_per_byte
    per_returned_byte = fo * objective.down_per_byte + bu * objective.up_per_byte
    n = costs.n
    source, sink, vertices = n, n + 1, n + 2
    edges: list[_Edge] = []
    for v in range(n):
        server = fs * costs.server_fwd[v] + bs * costs.server_bwd[v] + per_returned_byte * costs.returned[v]
        device = fd * costs.device_fwd[v] + bd * costs.device_bwd[v] + memory_weight * costs.mem[v]
        edges.append((source, v, None if v in constraints.must_device else server))
        edges.append((v, sink, None if v in constraints.must_server else device))
        consumers = costs.consumers[v]
        edges += [(w, v, None) for w in consumers]
        transfer = per_crossing_byte * costs.out_bytes[v]
        if len(consumers) == 1:
            edges.append((v, consumers[0], transfer))
        elif consumers and transfer > 0:
            edges.append((v, vertices, transfer))
            edges += [(vertices, w, None) for w in consumers]
            vertices += 1
    return _CutGraph(vertices, source, sink, [(u, v, c) for u, v, c in edges if c is None or c > 0])


def _exact_cut(cut: _CutGraph) -> tuple[float, set[int]]:
    """Min cut in integer picoseconds (networkx, exact): (a lower bound on its value, source side)."""
    graph = nx.DiGraph()
    graph.add_nodes_from(range(cut.vertices))
    for u, v, seconds in cut.edges:
        if seconds is None:
            graph.add_edge(u, v)  # no capacity attribute: infinite
        else:
            graph.add_edge(u, v, capacity=round(seconds * _PICOSECONDS))
    value, (source_side, _) = nx.minimum_cut(graph, cut.source, cut.sink, flow_func=preflow_push)
    return (value - 0.5 * cut.finite_edges) / _PICOSECONDS, source_side


def _fast_cut(cut: _CutGraph) -> tuple[float, set[int]]:
    """Min cut with capacities scaled to 32-bit integers (scipy): (a lower bound on its value, source side).

    The unit is the total finite capacity over 2**30, so no flow overflows and infinite
    edges (2**31 - 1) are never saturated; the bound subtracts half a unit per finite edge.
    """
    total = sum(edge[2] for edge in cut.edges if edge[2] is not None)
    unit = total / 2**30 if total > 0 else 1.0
    rows, cols, data = zip(*((u, v, _INFINITE if c is None else round(c / unit)) for u, v, c in cut.edges))
    graph = csr_matrix((np.array(data, dtype=np.int32), (rows, cols)), shape=(cut.vertices, cut.vertices))
    result = maximum_flow(graph, cut.source, cut.sink)
    residual = (graph - result.flow).tocsr()
    source_side, stack = {cut.source}, [cut.source]
    while stack:
        u = stack.pop()
        start, stop = residual.indptr[u], residual.indptr[u + 1]
        for v, left in zip(residual.indices[start:stop], residual.data[start:stop]):
            if left > 0 and v not in source_side:
                source_side.add(int(v))
                stack.append(int(v))
    return (result.flow_value - 0.5 * cut.finite_edges) * unit, source_side


def _project_to_simplex(values: list[float]) -> list[float]:
    """The nearest point of the probability simplex (Euclidean projection, by sorting)."""
    ordered = sorted(values, reverse=True)
    total, shift = 0.0, 0.0
    for k, value in enumerate(ordered, start=1):
        total += value
        candidate = (total - 1.0) / k
        if value - candidate > 0:
            shift = candidate
    return [max(value - shift, 0.0) for value in values]


class _DualAscent:
    """The weights ``(w, v, mu)`` and projected supergradient steps on them.

    At the cut's placement ``D``, the Lagrangian's supergradient is ``(1 - 1/M)`` times the
    stage times of ``D`` for ``w`` and ``v``, and ``mem(D) - B`` for ``mu`` (here in units of
    ``scale / B`` seconds per byte, so that all components are seconds). The step is Polyak's,
    towards the best value found, halved after five steps without a better bound.
    """

    def __init__(self, micro_batches: int, budget: int | None, scale: float) -> None:
        self.share = 1.0 - 1.0 / micro_batches
        self.budget, self.scale = budget, scale
        self.forward, self.backward, self.mu = [0.25] * 4, [0.25] * 4, 0.0
        self.step, self.stalled = 1.0, 0

    def weights(self) -> tuple[list[float], float]:
        """The eight stage coefficients and the weight per device byte."""
        base = 1.0 - self.share
        coefficients = [base + self.share * w for w in self.forward] + [base + self.share * w for w in self.backward]
        memory_weight = 0.0 if self.budget is None else self.mu * self.scale / max(self.budget, 1)
        return coefficients, memory_weight

    def update(self, terms: PipelinedTime, footprint: int, dual: float, target: float, improved: bool) -> bool:
        """Step towards ``target``; ``False`` when the supergradient is 0 (the weights are optimal)."""
        self.stalled = 0 if improved else self.stalled + 1
        if self.stalled >= 5:
            self.step, self.stalled = self.step / 2, 0
        forward = [self.share * t for t in terms.forward_stages]
        backward = [self.share * t for t in terms.backward_stages]
        memory = 0.0 if self.budget is None else self.scale * (footprint - self.budget) / max(self.budget, 1)
        centred = [g - sum(forward) / 4 for g in forward] + [g - sum(backward) / 4 for g in backward]
        norm = sum(g * g for g in centred) + memory**2
        if norm == 0:
            return False
        theta = self.step * (target - dual) / norm
        self.forward = _project_to_simplex([w + theta * g for w, g in zip(self.forward, forward)])
        self.backward = _project_to_simplex([w + theta * g for w, g in zip(self.backward, backward)])
        self.mu = max(0.0, self.mu + theta * memory)
        return True


class _Candidates:
    """The best placement seen that satisfies every constraint."""

    def __init__(self, costs: StageCosts, objective: Objective, budget: int | None, value: float, device) -> None:
        self.costs, self.objective, self.budget = costs, objective, budget
        self.value, self.device = value, device

    def offer(self, on_device: list[bool]) -> tuple[PipelinedTime, int]:
        """Evaluate a placement that meets the pins and private inputs; keep it if it fits and is better."""
        terms = self.costs.time(on_device, self.objective)
        footprint = sum(m for m, here in zip(self.costs.mem, on_device) if here)
        if (self.budget is None or footprint <= self.budget) and terms.total < self.value:
            self.value, self.device = terms.total, tuple(v for v, here in enumerate(on_device) if here)
        return terms, footprint


def certified_bound(
    costs: StageCosts,
    constraints: Constraints,
    objective: Objective,
    incumbent: tuple[float, tuple[int, ...] | None] = (math.inf, None),
    iterations: int = 60,
) -> BoundResult:
    """Bracket the minimum of ``T_M`` over the feasible placements (see the module docstring).

    Parameters:
        costs, constraints, objective: the problem, as for
            :func:`~lightning_split.planning.enumeration.search_placements`.
        incumbent: ``(T_M, device positions)`` of the best placement known so far.
        iterations: the most weight updates (fast 32-bit cuts); one exact cut at the best
            weights found ends the search.
    """
    n, budget = costs.n, constraints.budget
    best = _Candidates(costs, objective, budget, *incumbent)
    best.offer([v in constraints.must_device for v in range(n)])  # feasible: resolve() checked it
    all_device = math.inf
    if not constraints.must_server and (budget is None or sum(costs.mem) <= budget):
        all_device = best.offer([True] * n)[0].total

    def solve(cut: Callable[[_CutGraph], tuple[float, set[int]]], weights: list[float], memory_weight: float):
        value, source_side = cut(_cut_graph(costs, constraints, objective, weights, memory_weight))
        dual = value - (memory_weight * budget if budget is not None else 0.0) + objective.fixed_s
        return min(all_device, dual), dual, best.offer([v in source_side for v in range(n)])

    ascent = _DualAscent(objective.micro_batches, budget, scale=max(best.value, 1e-12))
    lower, best_weights, cuts = -math.inf, None, 0
    for _ in range(iterations):
        weights = ascent.weights()
        bound, dual, (terms, footprint) = solve(_fast_cut, *weights)
        cuts += 1
        improved = bound > lower
        if improved:
            lower, best_weights = bound, weights
        if closes(best.value, lower) or not ascent.update(terms, footprint, dual, best.value, improved):
            break
    if best_weights is not None and not closes(best.value, lower):
        lower = max(lower, solve(_exact_cut, *best_weights)[0])  # removes the 32-bit rounding from the bound
        cuts += 1
    return BoundResult(min(lower, best.value), best.value, best.device, cuts)
