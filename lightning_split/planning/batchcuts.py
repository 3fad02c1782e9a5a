"""Minimum cuts of several graphs in one compiled call, dropping after one phase those that cannot win.

Blockwise (:mod:`~lightning_split.planning.blockwise`) cuts the ranges of several cases only to
keep the cheapest case: a case's total is a constant plus its range's min cut. The graphs
(*parts*, source ``0`` and sink ``1`` each) are joined at their sources and sinks into one graph:
every source-sink path lies in one part, so a minimum cut of the union is a minimum cut of each,
and its smallest source side is the union of theirs (:func:`csgraph_min_cuts`).

:func:`screened_min_cuts` adds a screen after the first scaled phase of the engine
(:mod:`~lightning_split.planning.csgraph_flow`), which leaves less than ``k`` (a few
microseconds' worth of picoseconds) per edge of flow unpushed, so it brackets each part's min
cut ``c`` tightly:

- ``L``, the flow pushed so far from the source into the part, is a feasible flow of that part
  alone (the parts share only the source and the sink): ``L <= c``;
- ``U``, the capacity of the part's edges leaving the vertices the phase's scaled residual
  reaches, is the value of a cut of the part: ``c <= U`` (none when an infinite edge leaves
  them, its scaled residual rounded to zero).

With the caller's constants a part's total lies in ``[low + L, high + U]``. A part whose lower
end is at or above ``ceiling`` (the best total known) cannot improve on it, and one whose lower
end exceeds the least upper end of all parts cannot be the minimum, whose own part is kept
(``low <= high`` and ``L <= U``). The dropped parts are removed from the residual graph, and
the remaining phases run on the others, exactly as in the engine. On
the zoo's graphs at a slow link, every range is dropped after one phase where ``"full"`` needs
two on the whole graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lightning_split.planning.costmodel import PlanningError
from lightning_split.planning.csgraph_flow import Residual, start_flow

__all__ = ["Part", "csgraph_min_cuts", "screened_min_cuts"]

Part = tuple[np.ndarray, np.ndarray, np.ndarray, int]
"""``(tails, heads, capacities, vertices)``: a graph over ``0..vertices-1``, source 0, sink 1, ``-1`` infinite."""


def csgraph_min_cuts(parts: Sequence[Part]) -> list[tuple[int, np.ndarray]]:
    """Minimum cuts of several graphs at once: each part's value and smallest source side (its own labels).

    Raises:
        PlanningError: some part has no finite cut.
        OverflowError: the capacities add up to :data:`~lightning_split.planning.csgraph_flow.MAX_TOTAL` or more.
    """
    results = screened_min_cuts(parts)
    assert all(result is not None for result in results)  # nothing is screened without bounds
    return results  # type: ignore[return-value]


def screened_min_cuts(
    parts: Sequence[Part],
    lows: Sequence[int] | None = None,
    highs: Sequence[int] | None = None,
    ceiling: int | None = None,
) -> list[tuple[int, np.ndarray] | None]:
    """Minimum cuts of the parts that can hold the least total; ``None`` for those screened out.

    Parameters:
        parts: the graphs, as :data:`Part`.
        lows, highs: per part, constants such that its total lies between ``low + c`` and
            ``high + c`` for its min cut ``c`` (``low <= high``). Without them nothing is screened.
        ceiling: the best total known elsewhere: parts that cannot go below it are screened.

    Returns:
        Per part ``(value, source side)`` (the smallest source side of its minimum cuts, in its
        own labels), or ``None`` when its total is at or above ``ceiling`` or above another
        part's total (see the module docstring).

    Raises:
        PlanningError: some part has no finite cut.
        OverflowError: the capacities add up to :data:`~lightning_split.planning.csgraph_flow.MAX_TOTAL` or more.
    """
    union = _Union(parts)
    graph, _, bound = start_flow(union.tails, union.heads, union.capacities, union.vertices, 0, 1)
    kept = np.ones(len(parts) + 1, dtype=bool)  # the last: the sentinel part of the source and sink
    reached = None
    if bound and lows is not None and highs is not None:
        _, reached = graph.phase(bound)
        kept = union.screen(graph, reached, lows, highs, ceiling)
        if not kept.all():  # go on with the kept parts only: no path joins them through the others
            graph, old = graph.restricted(kept[union.part_of])
            reached = np.searchsorted(old, reached[kept[union.part_of[reached]]])
            _, side = graph.finish(graph.cut_capacity(reached), reached)
            return union.split(old[side], kept)
        bound = graph.cut_capacity(reached)
    return union.split(graph.finish(bound, reached)[1], kept)


class _Union:
    """The parts joined at their sources and sinks; part ``p``'s vertex ``x >= 2`` is ``x + offsets[p]``."""

    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = parts
        self.offsets, total = [], 2
        for _, _, _, vertices in parts:
            self.offsets.append(total - 2)
            total += vertices - 2
        self.vertices = total
        self.tails = np.concatenate([self._relabel(t, p) for p, (t, _, _, _) in enumerate(parts)])
        self.heads = np.concatenate([self._relabel(h, p) for p, (_, h, _, _) in enumerate(parts)])
        self.capacities = np.concatenate([c for _, _, c, _ in parts])
        self.edge_part = np.repeat(np.arange(len(parts)), [len(c) for _, _, c, _ in parts])
        # The part of each vertex; the source and the sink belong to a sentinel part, always kept.
        self.part_of = np.full(total, len(parts), dtype=np.int64)
        for p, (_, _, _, vertices) in enumerate(parts):
            self.part_of[2 + self.offsets[p] : self.offsets[p] + vertices] = p

    def _relabel(self, labels: np.ndarray, part: int) -> np.ndarray:
        return np.where(labels < 2, labels, labels + self.offsets[part])

    def screen(
        self, graph: Residual, reached: np.ndarray, lows: Sequence[int], highs: Sequence[int], ceiling: int | None
    ) -> np.ndarray:
        """Which parts survive the screen of the module docstring: one flag per part, and ``True`` for the sentinel.

        A part with an infinite edge leaving ``reached`` (its scaled residual rounded to zero) has no
        upper end; an edge from the source straight to the sink counts in no part's flow (a lower
        end only gets lower).
        """
        count = len(self.parts)
        from_source = graph.rows == graph.s
        flow = np.zeros(count + 1, dtype=np.int64)
        np.add.at(flow, self.part_of[graph.indices[from_source]], (graph.capacity - graph.residual)[from_source])
        upper, unbounded = self.crossing(reached)
        low_ends = [low + int(f) for low, f in zip(lows, flow[:count].tolist())]
        high_ends = [high + int(u) for high, u, no in zip(highs, upper.tolist(), unbounded.tolist()) if not no]
        least_high = min(high_ends, default=None)
        keep = [(least_high is None or low <= least_high) and (ceiling is None or low < ceiling) for low in low_ends]
        return np.array([*keep, True], dtype=bool)

    def crossing(self, reached: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per part, the capacity of its finite edges leaving ``reached``, and whether an infinite one leaves it."""
        inside = np.zeros(self.vertices, dtype=bool)
        inside[reached] = True
        crossing = inside[self.tails] & ~inside[self.heads]
        infinite = crossing & (self.capacities < 0)
        finite = crossing & ~infinite
        sums = np.zeros(len(self.parts), dtype=np.int64)
        np.add.at(sums, self.edge_part[finite], self.capacities[finite])
        unbounded = np.zeros(len(self.parts), dtype=bool)
        unbounded[self.edge_part[infinite]] = True
        return sums, unbounded

    def split(self, reached: np.ndarray, kept: np.ndarray) -> list[tuple[int, np.ndarray] | None]:
        """Each kept part's cut value and source side, in its own labels, from the union's source side."""
        values, unbounded = self.crossing(reached)
        if (unbounded & kept[:-1]).any():  # not reached when the union's cut is finite; kept as a guard
            raise PlanningError("no feasible placement satisfies the pins")
        results: list[tuple[int, np.ndarray] | None] = []
        for p, (_, _, _, vertices) in enumerate(self.parts):
            if not kept[p]:
                results.append(None)
                continue
            offset = self.offsets[p]
            own = reached[(reached < 2) | ((reached >= offset + 2) & (reached < offset + vertices))]
            results.append((int(values[p]), np.where(own < 2, own, own - offset)))
        return results
