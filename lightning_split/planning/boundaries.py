"""Boundary nodes: where the blockwise method splits a cost graph into a series of segments.

A node ``b`` is a *boundary* when every other node is an ancestor or a descendant of ``b`` and no
edge runs from a strict ancestor of ``b`` to a strict descendant (:func:`boundaries`; on a
ResNet, the block outputs). One linear sweep finds them (:func:`boundary_positions`): in graph
order, ``b`` at position ``p`` is a boundary iff (a) no edge ``(u, w)`` has ``u < p < w``, (b)
every node before ``p`` has a consumer and (c) every node after ``p`` has an input. Necessity:
ancestors of ``b`` lie before it and descendants after, so by the definition the nodes before
``p`` are exactly its ancestors (each has a path to ``b``, hence a consumer) and those after
are its descendants (each has an input); an edge over ``p`` would run from an ancestor to a
descendant. Sufficiency: by (a), consumers of nodes before ``p`` are at or before ``p``, so
backwards from ``p`` each such node has a consumer that is ``b`` or a later ancestor of ``b``
(b); likewise forwards each node after ``p`` has an input that is ``b`` or an earlier
descendant (c); and (a) is the no-skip condition. (a) is a sweep over a difference array of
open edges; (b) and (c) compare ``p`` with the first node without consumers and the last node
without inputs. So a graph with several inputs or outputs has boundaries only after its last
node without inputs and before its first node without consumers.

With side nodes (:mod:`~lightning_split.planning.clusters`) the sweep runs on the core subgraph
(reachability among core nodes is the same there), and the clusters block some of its
boundaries (:func:`series_boundaries`). A cluster is attached to the gap between consecutive
usable boundaries ``bj < b(j+1)`` when ``F`` lies in ``[bj, b(j+1))`` and ``G`` in ``(bj,
b(j+1)]``; the sweep keeps exactly the core boundaries for which every cluster has such a gap:
a cluster touching core nodes ``lo..hi`` blocks those strictly between, ``hi`` if in ``F``,
``lo`` if in ``G``, and a node in both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain

import numpy as np

from lightning_split.planning.clusters import Cluster, core_mask, find_clusters
from lightning_split.planning.cutgraph import CostGraph
from lightning_split.planning.profile import Profile

__all__ = ["boundaries", "boundary_positions", "series_boundaries"]


def boundary_positions(
    costs: CostGraph, core: Sequence[bool] | None = None, clusters: Sequence[Cluster] = ()
) -> list[int]:
    """Positions of the boundaries of the core subgraph that no cluster blocks, in O(nodes + edges).

    Without ``core`` every node is core: the boundaries of the whole graph. See the module
    docstring for the sweep (here a difference array summed by numpy) and for which boundaries
    a cluster blocks.
    """
    n, inputs = costs.n, costs.inputs
    counts = np.fromiter(map(len, inputs), dtype=np.int64, count=n)
    tails = np.fromiter(chain.from_iterable(inputs), dtype=np.int64, count=int(counts.sum()))
    heads = np.repeat(np.arange(n), counts)
    inner = np.ones(n, dtype=bool) if core is None else np.fromiter(core, dtype=bool, count=n)
    both = inner[tails] & inner[heads]  # edges of the core subgraph
    tails, heads = tails[both], heads[both]
    opened = np.bincount(tails + 1, minlength=n + 1) - np.bincount(heads, minlength=n + 1)
    for cluster in clusters:
        for start, stop in _blocked(cluster):
            opened[start] += 1
            opened[stop] -= 1
    has_input, has_consumer = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    has_input[heads] = True
    has_consumer[tails] = True
    sources, sinks = np.flatnonzero(inner & ~has_input), np.flatnonzero(inner & ~has_consumer)
    last_source = int(sources[-1]) if len(sources) else -1
    first_sink = int(sinks[0]) if len(sinks) else n
    open_over = np.cumsum(opened[:n])
    positions = np.arange(n)
    usable = (open_over == 0) & inner & (positions >= last_source) & (positions <= first_sink)
    return np.flatnonzero(usable).tolist()


def _blocked(cluster: Cluster) -> Iterator[tuple[int, int]]:
    """The ranges ``start..stop-1`` of core positions where the cluster rules a boundary out."""
    touched = cluster.touched
    if not touched:
        return
    lo, hi = min(touched), max(touched)
    start = lo if lo in cluster.feeds and lo < hi else lo + 1
    stop = hi + 1 if hi in cluster.feeds_on and lo < hi else hi
    if start < stop:
        yield start, stop
    for v in cluster.feeds_on & cluster.feeds:
        yield v, v + 1


def boundaries(profile: Profile) -> list[str]:
    """Names of the boundary nodes of the profile's graph, in graph order.

    A node ``b`` is a boundary iff every other node is an ancestor or a descendant of ``b`` and
    no edge runs from a strict ancestor of ``b`` to a strict descendant (none skips it). On a
    ResNet these are the outputs of the residual blocks. Runs in linear time; see the module
    docstring for the proof.
    """
    costs = CostGraph(profile)
    return [costs.names[p] for p in boundary_positions(costs)]


def series_boundaries(profile: Profile) -> list[str]:
    """Names of the nodes the ``"blockwise"`` method decomposes the graph at, in graph order.

    These are the boundaries of the *core* graph (nodes reachable from a model input that reach
    a model output) that no cluster of the other nodes (dead ends such as ``_assert`` calls,
    constants computed from parameters) straddles; see the module docstring. On a graph whose
    nodes are all core they are exactly :func:`boundaries`.
    """
    costs = CostGraph(profile)
    core = core_mask(costs)
    return [costs.names[p] for p in boundary_positions(costs, core, find_clusters(costs, core))]
