"""The cut graph of a range of consecutive nodes as numpy arrays, for the compiled min-cut engine.

:func:`~lightning_split.planning.cutgraph.cut_edges` builds the cut graph as a Python list of
``(u, v, capacity)`` triples, which every engine reads. For the compiled engine
(:mod:`~lightning_split.planning.csgraph_flow`) that list costs more to build and convert than
the max-flow itself costs on a DenseNet (about 6,500 edges: milliseconds of Python against one
of Dinic), so :func:`range_cut_arrays` builds the same graph for a range ``lo..hi`` with no
``fixed`` nodes directly as arrays, from the cost graph's arrays (:class:`ArrayCosts`, built once
per :class:`~lightning_split.planning.cutgraph.CostGraph`).

The edges are those of :func:`~lightning_split.planning.cutgraph.cut_edges` for ``nodes =
range(lo, hi + 1)`` (the tests compare the two), over local vertex labels: the source ``0``,
the sink ``1``, node ``v`` as ``2 + v - lo`` and its auxiliary vertex as ``2 + size + v - lo``
(``size = hi - lo + 1``; unused auxiliary vertices stay isolated). An infinite capacity is
:data:`INFINITE` (``-1``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

__all__ = ["INFINITE", "ArrayCosts", "RangeCut", "range_cut_arrays"]

INFINITE = -1
"""The capacity of an infinite edge in :class:`RangeCut`."""
_INT64_SAFE = 1 << 62


@dataclass(frozen=True)
class RangeCut:
    """A cut graph over vertices ``0..vertices-1`` (source 0, sink 1): edge ``i`` is ``tails[i] -> heads[i]``."""

    tails: np.ndarray
    heads: np.ndarray
    capacities: np.ndarray
    vertices: int
    lo: int

    def device_positions(self, reached: np.ndarray) -> list[int]:
        """Node positions among the source-side vertices ``reached`` (the auxiliary ones left out)."""
        size = (self.vertices - 2) // 2
        local = reached[(reached >= 2) & (reached < 2 + size)]
        return sorted((local - 2 + self.lo).tolist())


class ArrayCosts:
    """A cost graph's costs (``int64``) and consumer lists (one flat array and offsets), built once.

    The arguments are :class:`~lightning_split.planning.cutgraph.CostGraph`'s lists of the same names.
    """

    def __init__(
        self, dev: Sequence[int], srv: Sequence[int], xfer: Sequence[int], consumers: Sequence[Sequence[int]]
    ) -> None:
        n = len(dev)
        self.dev = np.array(dev, dtype=np.int64)
        self.srv = np.array(srv, dtype=np.int64)
        self.xfer = np.array(xfer, dtype=np.int64)
        counts = np.array([len(c) for c in consumers], dtype=np.int64)
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self.consumers = np.fromiter(chain.from_iterable(consumers), dtype=np.int64, count=int(counts.sum()))
        self.producers = np.repeat(np.arange(n, dtype=np.int64), counts)
        largest = max(max(dev, default=0), max(srv, default=0), max(xfer, default=0))
        self.fits = largest < _INT64_SAFE // max(1, 4 * len(self.consumers) + 3 * n)
        """Whether every capacity and their sum fit in ``int64`` (else the edge-list engines are used)."""


def range_cut_arrays(
    arrays: ArrayCosts, lo: int, hi: int, on_device: Collection[int], on_server: Collection[int]
) -> RangeCut:
    """The cut graph of ``cut_edges(costs, range(lo, hi + 1), on_device, on_server)`` as arrays."""
    size = hi - lo + 1
    to_device = _mask(on_device, lo, hi)
    to_server = _mask(on_server, lo, hi)
    local = np.arange(2, 2 + size, dtype=np.int64)
    srv, dev, xfer = arrays.srv[lo : hi + 1], arrays.dev[lo : hi + 1], arrays.xfer[lo : hi + 1]
    tails, heads, capacities = [], [], []

    def add(t: np.ndarray | int, h: np.ndarray | int, c: np.ndarray | int, where: np.ndarray) -> None:
        count = int(where.sum())
        for out, values in ((tails, t), (heads, h), (capacities, c)):
            out.append(values[where] if isinstance(values, np.ndarray) else np.full(count, values, dtype=np.int64))

    add(0, local, np.where(to_device, INFINITE, srv), to_device | (srv > 0))
    add(local, 1, np.where(to_server, INFINITE, dev), to_server | (dev > 0))
    start, stop = arrays.offsets[lo], arrays.offsets[hi + 1]
    producers, consumers = arrays.producers[start:stop] - lo, arrays.consumers[start:stop]
    inside = (consumers >= lo) & (consumers <= hi)  # all of them unless the producer is pinned to the server
    producers, consumers = producers[inside], consumers[inside] - lo
    every = np.ones(len(producers), dtype=bool)
    add(consumers + 2, producers + 2, INFINITE, every)  # each consumer follows its producer
    pays = ~to_server & (xfer > 0)
    fanout = np.bincount(producers, minlength=size)
    single = pays[producers] & (fanout[producers] == 1)
    add(producers + 2, consumers + 2, xfer[producers], single)
    shared = pays & (fanout > 1)
    add(local, local + size, xfer, shared)
    add(producers + 2 + size, consumers + 2, INFINITE, shared[producers])
    return RangeCut(np.concatenate(tails), np.concatenate(heads), np.concatenate(capacities), 2 + 2 * size, lo)


def _mask(positions: Collection[int], lo: int, hi: int) -> np.ndarray:
    mask = np.zeros(hi - lo + 1, dtype=bool)
    inside = [v - lo for v in positions if lo <= v <= hi]
    if inside:
        mask[inside] = True
    return mask
