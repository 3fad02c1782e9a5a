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

An infinite capacity (``None``) becomes one more than the sum of the finite ones, which no
finite cut reaches; a flow that large means a path of infinite edges. Graphs whose capacities
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

__all__ = ["LIMIT", "MAX_TOTAL", "csgraph_min_cut"]

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
    infinite = 1 + sum(capacity for _, _, capacity in edges if capacity is not None)
    if infinite * (len(edges) + 1) >= MAX_TOTAL:
        raise OverflowError("capacities too large for int64 residuals")
    graph = _Residual(edges, source, sink, infinite)
    value, bound = 0, graph.initial_bound()
    while bound:
        pushed, reached = graph.phase(bound)
        value += pushed
        if value >= infinite:
            raise PlanningError("no feasible placement satisfies the pins")
        bound = min(bound - pushed, graph.cut_capacity(reached))
    return value, set(graph.vertices[graph.reachable(graph.residual)].tolist())


class _Residual:
    """Residual capacities over a fixed CSR pattern that holds both directions of every edge.

    ``residual[i]`` is the capacity left from ``rows[i]`` to ``indices[i]``; scipy returns its
    flow over the same pattern (every reverse edge is already there), so a phase is a few
    array operations.
    """

    def __init__(self, edges: Sequence[tuple[int, int, int | None]], source: int, sink: int, infinite: int) -> None:
        m = len(edges)
        labels = np.array([*(u for u, _, _ in edges), *(v for _, v, _ in edges), source, sink], dtype=np.int64)
        self.vertices, index = np.unique(labels, return_inverse=True)
        self.n = n = len(self.vertices)
        self.s, self.t = int(index[2 * m]), int(index[2 * m + 1])
        capacities = np.array([infinite if c is None else c for _, _, c in edges], dtype=np.int64)
        tails, heads = index[:m], index[m : 2 * m]
        pattern = csr_matrix(
            (np.concatenate([capacities, np.zeros(m, dtype=np.int64)]), (np.r_[tails, heads], np.r_[heads, tails])),
            shape=(n, n),
        )
        pattern.sum_duplicates()
        self.indptr, self.indices, self.residual = pattern.indptr, pattern.indices, pattern.data
        self.rows = np.repeat(np.arange(n), np.diff(self.indptr))

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
