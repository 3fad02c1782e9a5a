"""Exact minimum s-t cuts by :func:`scipy.sparse.csgraph.maximum_flow`, on capacities of any size.

scipy's max-flow is compiled (Dinic's algorithm in Cython), so it cuts a DenseNet-201 cost graph
in about a millisecond where networkx takes hundreds, but it counts in 32-bit integers: a
larger capacity is silently wrapped around. The planners count in picoseconds, so one node's
compute alone can exceed ``2**31``. :func:`csgraph_min_cut` therefore solves by capacity
scaling, exactly:

1. Residual capacities ``r`` (``int64``, one entry per direction of each edge) start as the
   capacities; ``bound`` is an upper bound on the flow still to push (first the capacity out of
   the source or into the sink, whichever is smaller).
2. A phase divides by ``k = ceil(bound / LIMIT)``: scipy finds a maximum flow ``f`` of
   ``floor(min(r, bound) / k)``, a flow that ``k * f`` turns into a feasible flow of ``r``
   (``LIMIT = 2**30 - 1`` keeps every sum scipy forms, a capacity plus a reverse flow, within
   ``int32``). ``r`` loses ``k * f``.
3. The new ``bound`` is the smaller of ``bound - k * |f|`` and the residual capacity, in ``r``,
   of the cut that the phase ends on (the vertices its scaled residual reaches): each edge of
   that cut keeps less than ``k`` unless it was clipped, and then the flow pushed is within
   ``k`` of the old bound. So the bound shrinks by about ``LIMIT / edges`` per phase, and a phase
   with ``k = 1`` is exact and leaves it at zero (two or three phases on the zoo's graphs).
4. With no flow left to push, the source side is the set of vertices the source reaches over
   positive residual capacities: the smallest source side among the minimum cuts, the same
   one as the augmenting-path engine's, whatever flow scipy found.

An infinite capacity (``None``) becomes one more than the pins' cut (the capacity leaving what
the source reaches over infinite edges), a finite cut, so no minimum cut holds such an edge;
when the sink itself is reached that way, every cut is infinite. Graphs whose capacities
add up to more than :data:`MAX_TOTAL` (``2**62``, where ``int64`` would overflow) raise
:class:`OverflowError`, and :func:`~lightning_split.planning.mincut.min_cut` falls back to the
exact pure-Python engine for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from lightning_split.planning.costmodel import PlanningError

__all__ = ["LIMIT", "MAX_TOTAL", "Residual", "csgraph_min_cut", "csgraph_min_cut_arrays", "start_flow"]

LIMIT = (1 << 30) - 1
"""The largest scaled capacity handed to scipy: a capacity plus a reverse flow stays below ``2**31``."""
MAX_TOTAL = 1 << 62
"""Capacities (infinite ones included, as one more than the finite sum) must add up to less than this."""


def csgraph_min_cut(edges: Sequence[tuple[int, int, int | None]], source: int, sink: int) -> tuple[int, set[int]]:
    """The value and the smallest source side of a minimum ``source``-``sink`` cut (see the module docstring).

    Raises:
        PlanningError: every cut is infinite.
        OverflowError: the capacities add up to :data:`MAX_TOTAL` or more.
    """
    m = len(edges)
    labels = np.array([*(u for u, _, _ in edges), *(v for _, v, _ in edges), source, sink], dtype=np.int64)
    vertices, index = np.unique(labels, return_inverse=True)
    capacities = np.array([-1 if c is None else c for _, _, c in edges], dtype=np.int64)
    if m and capacities.max() >= MAX_TOTAL // (m + 1):
        raise OverflowError("capacities too large for int64 residuals")
    s, t = int(index[2 * m]), int(index[2 * m + 1])
    value, reached = csgraph_min_cut_arrays(index[:m], index[m : 2 * m], capacities, len(vertices), s, t)
    return value, set(vertices[reached].tolist())


def csgraph_min_cut_arrays(
    tails: np.ndarray, heads: np.ndarray, capacities: np.ndarray, vertices: int, source: int, sink: int
) -> tuple[int, np.ndarray]:
    """:func:`csgraph_min_cut` over vertices ``0..vertices-1``, edges as arrays (a capacity of ``-1`` is infinite).

    Returns the cut's value and the vertices of its smallest source side. The capacities must
    fit ``int64`` with room for their sum (``max * (edges + 1) < MAX_TOTAL``; checked by the callers).

    Raises:
        PlanningError: every cut is infinite.
        OverflowError: the capacities add up to :data:`MAX_TOTAL` or more.
    """
    graph, value, bound = start_flow(tails, heads, capacities, vertices, source, sink)
    pushed, reached = graph.finish(bound)
    return value + pushed, reached


def start_flow(
    tails: np.ndarray, heads: np.ndarray, capacities: np.ndarray, vertices: int, source: int, sink: int
) -> tuple[Residual, int, int]:
    """Step 1 and the paths ``s -> v -> t`` of the module docstring: (residual, flow so far, bound on the rest).

    An infinite edge (``-1``) gets one more than the pins' cut (:func:`_forced_cut`), which the
    flow never reaches.

    Raises:
        PlanningError: every cut is infinite (the sink is reached over infinite edges).
        OverflowError: the capacities add up to :data:`MAX_TOTAL` or more.
    """
    finite = capacities >= 0
    forced = _forced_cut(tails, heads, capacities, finite, vertices, source, sink)
    if forced is None:  # a path of infinite edges joins the source to the sink
        raise PlanningError("no feasible placement satisfies the pins")
    infinite = 1 + forced
    if infinite * 2 * (len(capacities) + 2) >= MAX_TOTAL:
        raise OverflowError("capacities too large for int64 residuals")
    graph = Residual(tails, heads, np.where(finite, capacities, infinite), vertices, source, sink)
    value = graph.saturate_two_edge_paths()
    return graph, value, min(graph.initial_bound(), forced - value)


def _forced_cut(
    tails: np.ndarray,
    heads: np.ndarray,
    capacities: np.ndarray,
    finite: np.ndarray,
    vertices: int,
    source: int,
    sink: int,
) -> int | None:
    """The value of the cut around what the source reaches over infinite edges (the pins' closure).

    A finite cut, so the flow is at most this; and an infinite edge counted as one more than
    it is never in a minimum cut, which keeps the residuals small (the sum of all capacities
    overflows ``int64`` on deep graphs at low bandwidth). ``None`` when the sink is reached:
    every cut is infinite.
    """
    infinite = ~finite
    graph = csr_matrix(
        (np.ones(int(infinite.sum()), dtype=np.int8), (tails[infinite], heads[infinite])), shape=(vertices, vertices)
    )
    reached = breadth_first_order(graph, source, directed=True, return_predecessors=False)
    inside = np.zeros(vertices, dtype=bool)
    inside[reached] = True
    if inside[sink]:
        return None
    return int(capacities[finite & inside[tails] & ~inside[heads]].sum())


class Residual:
    """Residual capacities over a fixed CSR pattern that holds both directions of every edge.

    ``residual[i]`` is the capacity left from ``rows[i]`` to ``indices[i]``; scipy returns its
    flow over the same pattern (every reverse edge is already there), so a phase is a few
    array operations.
    """

    def __init__(
        self, tails: np.ndarray, heads: np.ndarray, capacities: np.ndarray, n: int, source: int, sink: int
    ) -> None:
        m = len(tails)
        self.n, self.s, self.t = n, source, sink
        pattern = csr_matrix(
            (np.concatenate([capacities, np.zeros(m, dtype=np.int64)]), (np.r_[tails, heads], np.r_[heads, tails])),
            shape=(n, n),
        )
        pattern.sum_duplicates()
        self.indptr, self.indices, self.residual = pattern.indptr, pattern.indices, pattern.data
        self.capacity = self.residual.copy()
        """The capacities over the pattern (``0`` for a reverse direction): ``capacity - residual`` is the flow."""
        self.rows = np.repeat(np.arange(n), np.diff(self.indptr))

    def saturate_two_edge_paths(self) -> int:
        """Push flow along every path ``s -> v -> t`` at once (most of the flow, no search); return how much.

        Each node's compute edges form such a path, so this leaves Dinic only the flow that
        goes through transfer edges: fewer phases, less work in each.
        """
        n, s, t, rows, indices, residual = self.n, self.s, self.t, self.rows, self.indices, self.residual
        out_of_source, into_sink = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        from_s, to_t = rows == s, indices == t
        out_of_source[indices[from_s]] = residual[from_s]
        into_sink[rows[to_t]] = residual[to_t]
        through = np.minimum(out_of_source, into_sink)
        through[[s, t]] = 0
        residual[from_s] -= through[indices[from_s]]
        residual[to_t] -= through[rows[to_t]]
        back_to_s, back_from_t = indices == s, rows == t
        residual[back_to_s] += through[rows[back_to_s]]
        residual[back_from_t] += through[indices[back_from_t]]
        return int(through.sum())

    def initial_bound(self) -> int:
        """The capacity out of the source or into the sink, whichever is smaller: no flow exceeds it."""
        out_of_source = self.residual[self.rows == self.s].sum()
        into_sink = self.residual[self.indices == self.t].sum()
        return int(min(out_of_source, into_sink))

    def phase(self, bound: int) -> tuple[int, np.ndarray]:
        """One scaled max-flow, subtracted from the residual: (flow pushed, vertices the scaled residual reaches)."""
        k = -(-bound // LIMIT)
        scaled = np.minimum(self.residual, bound) // k
        matrix = csr_matrix((scaled.astype(np.int32), self.indices, self.indptr), shape=(self.n, self.n))
        result = maximum_flow(matrix, self.s, self.t, method="dinic")
        flow = result.flow
        if np.array_equal(flow.indptr, self.indptr) and np.array_equal(flow.indices, self.indices):
            flow_data = flow.data.astype(np.int64)
        else:  # not seen with scipy 1.17; kept so that another layout stays correct
            flow_data = np.asarray(flow[self.rows, self.indices], dtype=np.int64).ravel()
        self.residual = self.residual - k * flow_data
        return k * int(result.flow_value), self.reachable(scaled - flow_data)

    def finish(self, bound: int, reached: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """Phases until no flow is left (at most ``bound``): (flow pushed, the smallest source side of the min cuts).

        A phase whose reached set has no residual capacity leaving it ends the search, and that
        set is the answer without another search: no positive residual edge leaves it, and it
        holds only vertices reachable over positive residuals (a positive scaled residual is a
        positive residual). ``reached``, if given, is such a set from an earlier phase.
        """
        total = 0
        while bound:
            pushed, reached = self.phase(bound)
            total += pushed
            left = self.cut_capacity(reached)
            bound = min(bound - pushed, left)
            if not left:
                return total, reached
        if reached is not None and not self.cut_capacity(reached):
            return total, reached
        return total, self.reachable(self.residual)

    def restricted(self, keep: np.ndarray) -> tuple[Residual, np.ndarray]:
        """The residual graph on the vertices flagged in ``keep`` (the source and sink among them), as it stands.

        Returns it and, per new vertex, its label here (increasing, so each row stays sorted).
        Exact for the kept vertices when no positive residual path joins them through the others
        (parts joined only at the source and sink, the rest dropped).
        """
        old = np.flatnonzero(keep)
        label = np.full(self.n, -1, dtype=np.int64)
        label[old] = np.arange(len(old))
        entries = keep[self.rows] & keep[self.indices]
        other = object.__new__(Residual)
        other.n, other.s, other.t = len(old), int(label[self.s]), int(label[self.t])
        other.rows = label[self.rows[entries]]
        other.indices = label[self.indices[entries]].astype(self.indices.dtype)
        other.indptr = np.zeros(other.n + 1, dtype=self.indptr.dtype)
        np.cumsum(np.bincount(other.rows, minlength=other.n), out=other.indptr[1:])
        other.residual, other.capacity = self.residual[entries], self.capacity[entries]
        return other, old

    def reachable(self, residual: np.ndarray) -> np.ndarray:
        """Indices of the vertices the source reaches over positive entries of ``residual`` (over the pattern)."""
        positive = residual > 0
        indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.rows[positive], minlength=self.n), out=indptr[1:])
        graph = csr_matrix((residual[positive], self.indices[positive], indptr), shape=(self.n, self.n))
        return breadth_first_order(graph, self.s, directed=True, return_predecessors=False)

    def cut_capacity(self, reached: np.ndarray) -> int:
        """Residual capacity from ``reached`` to the other vertices: the flow left to push is at most this."""
        inside = np.zeros(self.n, dtype=bool)
        inside[reached] = True
        crossing = inside[self.rows] & ~inside[self.indices]
        return int(self.residual[crossing].sum())
