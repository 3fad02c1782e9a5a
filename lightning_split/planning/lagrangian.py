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

Capacities are integers (picoseconds, like the sequential planner: networkx's flow is exact on
integers), and the bound subtracts half a picosecond per finite edge for their rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
from networkx.algorithms.flow import preflow_push

from lightning_split.planning.constraints import Constraints
from lightning_split.planning.pipelined import Objective, StageCosts

__all__ = ["BoundResult", "certified_bound", "closes"]

_PICOSECONDS = 1e12
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


def _weighted_cut(
    costs: StageCosts, constraints: Constraints, objective: Objective, weights: list[float], memory_weight: float
) -> tuple[float, list[bool]]:
    """Minimise the weighted linear objective; return (a lower bound on its minimum, the cut's device mask).

    ``weights`` are the eight coefficients of the stages: forward (device, upload, server,
    download), then backward (upload, server, download, device).
    """
    fd, fu, fs, fo, bu, bs, bo, bd = weights
    per_crossing_byte = fu * objective.up_per_byte + bo * objective.down_per_byte
    per_returned_byte = fo * objective.down_per_byte + bu * objective.up_per_byte
    graph = nx.DiGraph()
    graph.add_nodes_from(("s", "t"))
    finite = 0

    def edge(u: object, v: object, seconds: float | None) -> None:
        nonlocal finite
        if seconds is None:
            graph.add_edge(u, v)  # no capacity attribute: infinite
        elif seconds > 0:
            graph.add_edge(u, v, capacity=round(seconds * _PICOSECONDS))
            finite += 1

    for v in range(costs.n):
        server = fs * costs.server_fwd[v] + bs * costs.server_bwd[v] + per_returned_byte * costs.returned[v]
        device = fd * costs.device_fwd[v] + bd * costs.device_bwd[v] + memory_weight * costs.mem[v]
        edge("s", v, None if v in constraints.must_device else server)
        edge(v, "t", None if v in constraints.must_server else device)
        consumers = costs.consumers[v]
        for w in consumers:
            edge(w, v, None)
        transfer = per_crossing_byte * costs.out_bytes[v]
        if len(consumers) == 1:
            edge(v, consumers[0], transfer)
        elif consumers and transfer > 0:
            edge(v, ("a", v), transfer)
            for w in consumers:
                edge(("a", v), w, None)
    value, (source_side, _) = nx.minimum_cut(graph, "s", "t", flow_func=preflow_push)
    on_device = [v in source_side for v in range(costs.n)]
    return (value - 0.5 * finite) / _PICOSECONDS, on_device


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


def _coefficients(m: int, forward: list[float], backward: list[float]) -> list[float]:
    share = 1.0 - 1.0 / m
    return [1.0 / m + share * w for w in forward] + [1.0 / m + share * w for w in backward]


def certified_bound(
    costs: StageCosts,
    constraints: Constraints,
    objective: Objective,
    incumbent: tuple[float, tuple[int, ...] | None] = (math.inf, None),
    iterations: int = 40,
) -> BoundResult:
    """Bracket the minimum of ``T_M`` over the feasible placements (see the module docstring).

    Parameters:
        costs, constraints, objective: the problem, as for
            :func:`~lightning_split.planning.enumeration.search_placements`.
        incumbent: ``(T_M, device positions)`` of the best placement known so far.
        iterations: the most min cuts to solve.
    """
    m, budget = objective.micro_batches, constraints.budget
    best_value, best_device = incumbent
    smallest = [v in constraints.must_device for v in range(costs.n)]  # feasible: resolve() checked it
    all_device = math.inf
    if not constraints.must_server and (budget is None or sum(costs.mem) <= budget):
        all_device = costs.time([True] * costs.n, objective).total
    for on_device, value in ((smallest, costs.time(smallest, objective).total), ([True] * costs.n, all_device)):
        if value < best_value:
            best_value, best_device = value, tuple(v for v in range(costs.n) if on_device[v])
    forward, backward, mu = [0.25] * 4, [0.25] * 4, 0.0
    scale = max(best_value, 1e-12)  # seconds per unit of mu
    lower, step, stalled, cuts = -math.inf, 1.0, 0, 0
    for _ in range(iterations):
        memory_weight = 0.0 if budget is None else mu * scale / max(budget, 1)
        weights = _coefficients(m, forward, backward)
        cut_value, on_device = _weighted_cut(costs, constraints, objective, weights, memory_weight)
        cuts += 1
        footprint = sum(costs.mem[v] for v in range(costs.n) if on_device[v])
        dual = cut_value - (memory_weight * budget if budget is not None else 0.0) + objective.fixed_s
        if min(all_device, dual) > lower:
            lower, stalled = min(all_device, dual), 0
        else:
            stalled += 1
        terms = costs.time(on_device, objective)
        if (budget is None or footprint <= budget) and terms.total < best_value:
            best_value, best_device = terms.total, tuple(v for v in range(costs.n) if on_device[v])
        if closes(best_value, lower):
            break
        share = 1.0 - 1.0 / m
        gradient = [share * t for t in terms.forward_stages] + [share * t for t in terms.backward_stages]
        memory_gradient = 0.0 if budget is None else scale * (footprint - budget) / max(budget, 1)
        centred = [g - sum(gradient[:4]) / 4 for g in gradient[:4]] + [g - sum(gradient[4:]) / 4 for g in gradient[4:]]
        norm = sum(g * g for g in centred) + memory_gradient**2
        if norm == 0:
            break
        if stalled >= 5:
            step, stalled = step / 2, 0
        theta = step * (best_value - dual) / norm
        forward = _project_to_simplex([w + theta * g for w, g in zip(forward, gradient[:4])])
        backward = _project_to_simplex([w + theta * g for w, g in zip(backward, gradient[4:])])
        mu = max(0.0, mu + theta * memory_gradient)
    return BoundResult(min(lower, best_value), best_value, best_device, cuts)
