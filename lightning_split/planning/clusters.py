"""Side nodes: the core of a cost graph, the clusters of the other nodes, and their best placements.

Traced graphs hold nodes off the main path: dead ends that reach no model output (ViT's
``_assert`` chains, unused ``getattr`` of shapes and attention weights) and constants that no
model input reaches (Swin's relative position biases, computed from parameters). A single one
makes most boundaries disappear, since a boundary must be comparable with every node. So the
blockwise method decomposes the *core* instead (:func:`core_mask`): the nodes reachable from an
input that reach an output. Its ancestors and descendants within the core are those in the
whole graph (a path between core nodes has only core nodes on it).

The other nodes form *clusters* (:func:`find_clusters`): connected by an edge, or consumers of
the same core tensor (they share its transfer). A cluster touches the core only through the core
nodes it consumes (``F``; only dead ends consume core nodes) and those it feeds (``G``; only
constants feed them). Clusters share no tensor (they would be one cluster) and no node, so with
the core nodes it touches all on one side, a cluster's best placement is independent of every
other choice: :func:`cluster_values` finds it, by a min cut of the cluster with those core nodes
fixed (or by enumeration for clusters of fewer than ``_TINY_CLUSTER`` nodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning_split.planning.costmodel import PlanningError
from lightning_split.planning.cutgraph import INFEASIBLE, CostGraph, cut_edges
from lightning_split.planning.exhaustive import Choices, cheapest_placement
from lightning_split.planning.mincut import default_algorithm, min_cut
from lightning_split.planning.ranges import SMALL_SEGMENT

__all__ = ["Cluster", "Placement", "cluster_values", "core_mask", "find_clusters"]

Placement = tuple[int, list[int]]
"""``(integer cost, device positions)`` of a placement."""

_TINY_CLUSTER = 8  # clusters of fewer nodes are placed by enumeration instead of a min cut


@dataclass(frozen=True)
class Cluster:
    """A connected group of non-core nodes and the core nodes it touches (positions, graph order).

    Attributes:
        nodes: its nodes, in graph order.
        feeds_on: core nodes it consumes (``F``).
        feeds: core nodes it feeds (``G``).
    """

    nodes: list[int]
    feeds_on: set[int]
    feeds: set[int]

    @property
    def touched(self) -> set[int]:
        """The core nodes it consumes or feeds."""
        return self.feeds_on | self.feeds


def core_mask(costs: CostGraph) -> list[bool]:
    """Which nodes are *core*: reachable from a model input and reaching a model output (two searches).

    When every node has a consumer or is an output, and an input or is a model input, every node
    is core without a search: following consumers from any node ends at a node without any, an
    output; following inputs back ends at a model input. That is the common case (no side nodes).
    """
    if all(c or o for c, o in zip(costs.consumers, costs.is_output)) and all(
        i or m for i, m in zip(costs.inputs, costs.is_input)
    ):
        return [True] * costs.n

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


def find_clusters(costs: CostGraph, core: list[bool]) -> list[Cluster]:
    """Group the non-core nodes: linked by an edge, or consumers of the same core node (union-find).

    The clusters come in the graph order of their first nodes.
    """
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
    groups: dict[int, list[int]] = {}
    for v in range(costs.n):
        if not core[v]:
            groups.setdefault(find(v), []).append(v)
    return [
        Cluster(
            nodes,
            feeds_on={u for v in nodes for u in costs.inputs[v] if core[u]},
            feeds={w for v in nodes for w in costs.consumers[v] if core[w]},
        )
        for nodes in groups.values()
    ]


def cluster_values(
    costs: CostGraph, cluster: Cluster, must_device: set[int], on_server: set[int]
) -> tuple[Placement | None, Placement | None]:
    """Best placements of a cluster with all the core nodes it touches on the device, and on the server.

    Each is ``(value, device nodes)``, or ``None`` if the pins make it infeasible. The value counts
    the cluster's own compute and transfers and, when the core nodes are on the device, the
    transfers of the core tensors it consumes (none of their core consumers is on the server in
    the cases that use this value). ``must_device`` and ``on_server`` are the pins (inputs
    included in ``must_device``). Clusters of fewer than ``_TINY_CLUSTER`` nodes are enumerated,
    larger ones cut, unless the whole cluster on the core nodes' side is optimal (:func:`_all_on_one_side`).
    """
    device_side = _all_on_one_side(costs, cluster, True, must_device, on_server)
    server_side = _all_on_one_side(costs, cluster, False, must_device, on_server)
    if device_side is not None and server_side is not None:  # ViT's dead ends: no work, no search
        return device_side, server_side
    if len(cluster.nodes) < _TINY_CLUSTER:
        enumeration = _Enumeration(costs, cluster)
        return (
            device_side or enumeration.best(True, must_device, on_server),
            server_side or enumeration.best(False, must_device, on_server),
        )
    return (
        device_side or _cut(costs, cluster, True, must_device, on_server),
        server_side or _cut(costs, cluster, False, must_device, on_server),
    )


def _all_on_one_side(
    costs: CostGraph, cluster: Cluster, core_on_device: bool, must_device: set[int], on_server: set[int]
) -> Placement | None:
    """The whole cluster on the side of the core nodes it touches, when that is optimal; else ``None``.

    On that side no tensor crosses (its core inputs and consumers are there too), so it costs
    the sum of its nodes' compute there; every placement costs at least the sum of each node's
    cheaper compute (transfers are not negative). So when no node is cheaper on the other side
    and no pin (or input) forbids that side, it is optimal.
    """
    nodes = cluster.nodes
    if core_on_device:
        if any(v in on_server for v in nodes) or any(costs.srv[v] < costs.dev[v] for v in nodes):
            return None
        return sum(costs.dev[v] for v in nodes), list(nodes)
    if any(v in must_device for v in nodes) or any(costs.dev[v] < costs.srv[v] for v in nodes):
        return None
    return sum(costs.srv[v] for v in nodes), []


def _cut(
    costs: CostGraph, cluster: Cluster, core_on_device: bool, must_device: set[int], on_server: set[int]
) -> Placement | None:
    """One of :func:`cluster_values` by a min cut of the cluster, the core nodes it touches fixed on one side."""
    edges = cut_edges(costs, cluster.nodes, must_device, on_server, cluster.touched, core_on_device)
    algorithm = "augmenting_path" if len(cluster.nodes) < SMALL_SEGMENT else default_algorithm()
    try:
        value, source_side = min_cut(edges, algorithm)
    except PlanningError:
        return None
    return value, [v for v in cluster.nodes if v in source_side]


class _Enumeration:
    """:func:`cluster_values` by trying every feasible placement; for clusters of a few nodes.

    As in :func:`~lightning_split.planning.exhaustive.exhaustive`, with the core nodes outside:
    a node may go to the device only if no input of it is on the server (core inputs are on the
    server iff the core side is the server), and to the server only if no core node it feeds is
    on the device. A node feeding a core node on the server always sends its tensor.
    """

    def __init__(self, costs: CostGraph, cluster: Cluster) -> None:
        self.costs, self.nodes = costs, cluster.nodes
        local = {v: i for i, v in enumerate(cluster.nodes)}
        self.consumers = [[local[w] for w in costs.consumers[v] if w in local] for v in cluster.nodes]
        self.feeds_core = [any(w not in local for w in costs.consumers[v]) for v in cluster.nodes]
        self.eats_core = [any(u not in local for u in costs.inputs[v]) for v in cluster.nodes]
        # The core tensors the cluster consumes, with their consumers in it: sent when one of those is on the server.
        self.shared = [(costs.xfer[u], [local[w] for w in costs.consumers[u] if w in local]) for u in cluster.feeds_on]

    def best(self, core_on_device: bool, must_device: set[int], on_server: set[int]) -> Placement | None:
        """The cheapest placement with the core nodes the cluster touches on the device (or the server)."""
        nodes, costs, shared = self.nodes, self.costs, self.shared
        choices = Choices(
            nodes=nodes,
            consumers=self.consumers,
            may_device=[v not in on_server and (core_on_device or not eats) for v, eats in zip(nodes, self.eats_core)],
            may_server=[
                v not in must_device and not (feeds and core_on_device) for v, feeds in zip(nodes, self.feeds_core)
            ],
            crosses=[feeds and not core_on_device for feeds in self.feeds_core],
            device=costs.dev,
            transfer=costs.xfer,
            server=costs.srv,
        )

        def finish(cost: int, _: int, in_server: list[bool]) -> int:
            return cost + sum(trip for trip, consumers in shared if any(in_server[i] for i in consumers))

        value, device = cheapest_placement(choices, INFEASIBLE, finish if core_on_device and shared else None, True)
        return None if device is None else (value, [nodes[i] for i in device])
