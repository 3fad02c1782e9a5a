"""Optimal device/server placement: the minimum s-t cut of a profile's cost graph.

The planner minimises ``T(D, S)`` of ``docs/cost-model.md`` over feasible placements: every
``"input"`` node on the device, no edge from the server back to the device, and the user's
pins respected. Two exact methods solve it, and a few baselines give something to compare to.

``"full"``
    One minimum s-t cut of the whole graph (:func:`networkx.minimum_cut`), built as follows.
    The source ``s`` is the device side, the sink ``t`` the server side; a node on the source
    side of the cut is in ``D``.

    - ``s -> v`` with capacity ``server_s(v)``, plus ``out_bytes(v) * (1/up + 1/down)`` when
      ``v`` is a model output: cut exactly when ``v`` is in ``S``.
    - ``v -> t`` with capacity ``device_s(v)``: cut exactly when ``v`` is in ``D``.
    - for each data edge ``u -> w``, an infinite edge ``w -> u``: a cut with ``u`` in ``S`` and
      ``w`` in ``D`` is infinite, so finite cuts are exactly the feasible placements.
    - for each node ``u`` with consumers, ``u -> a_u`` with capacity ``out_bytes(u) * (1/up +
      1/down)`` and infinite ``a_u -> w`` for each consumer ``w`` (with a single consumer the
      auxiliary vertex is dropped: ``u -> w`` carries the capacity). If some consumer is in
      ``S``, ``a_u`` must be on the sink side (else ``a_u -> w`` is cut), so ``u -> a_u`` is cut
      iff ``u`` is in ``D``; if every consumer is in ``D``, the minimum puts ``a_u`` on the source
      side for free. Hence the transfer is paid once per tensor, only when it crosses.
    - input nodes and ``pin_device`` get infinite ``s -> v``; ``pin_server`` infinite ``v -> t``.

    So for every feasible ``D``, the cheapest cut whose source side holds exactly the nodes of
    ``D`` costs ``cut(D) = T(D, S) - rtt(S)`` where ``rtt(S) = 2 * rtt_s`` if ``S`` is not empty, else 0. The rtt term
    is not a sum over nodes and is added afterwards: let ``D*`` be the min cut, of value ``c*``.
    If ``S*`` is empty, ``c* = T(all device) <= cut(D) <= T(D)`` for every ``D``: all-device is
    optimal. Otherwise every placement with ``S`` non-empty costs ``cut(D) + 2 rtt >= c* + 2 rtt
    = T(D*)``, and the only placement with ``S`` empty is all-device; so ``min(T(D*), T(all
    device))`` is the optimum (all-device only when no node is pinned to the server).

    networkx's flow algorithms are not exact with float capacities (round-off can return a
    wrong partition), so every capacity is an integer number of picoseconds. Both exact methods
    minimise that same integer objective; :attr:`Plan.predicted_step_s` is recomputed in float
    from the profile. The flow algorithm is :func:`networkx.algorithms.flow.preflow_push`: on a
    500-node residual stack it was the fastest of preflow_push, boykov_kolmogorov, dinitz,
    shortest_augmenting_path and edmonds_karp (see ``_FLOW_FUNC``).

``"blockwise"`` (the default)
    The same optimum, found by series decomposition. A node ``b`` is a *boundary* when every
    other node is an ancestor or a descendant of ``b`` and no edge runs from a strict ancestor
    of ``b`` to a strict descendant (:func:`boundaries`; on a ResNet, the block outputs). The
    boundaries form a chain ``b1 < ... < bk`` in graph order, and ``D`` is closed under
    ancestors, so ``D`` holds a prefix ``b1..bi`` of that chain: the nodes up to ``bi`` are all
    on the device (its ancestors), those from ``b(i+1)`` all on the server (its descendants),
    and only the segment strictly between them is free. Because no edge skips a boundary, the
    nodes before ``bi`` pay no transfer (their consumers are at or before ``bi``), the nodes
    after ``b(i+1)`` pay their server time and return trips only, and every term that depends
    on the free nodes involves only ``{bi} + segment + {b(i+1)}``. So the best placement of
    case ``i`` costs a prefix device sum, plus a suffix server sum, plus ``2 rtt``, plus the min
    cut of the small graph of that range with ``bi`` pinned to the device and ``b(i+1)`` to the
    server. Two more cases complete the cover of all feasible placements: ``b1`` on the server
    (the range before ``b1`` is free, inputs pinned to the device) and ``bk`` on the device (the
    range after it is free; all-device included, rtt handled as in ``"full"``). The minimum over
    the cases is the global optimum, exactly, since each case is solved exactly in the same
    integer picoseconds as ``"full"``.

    Pins: a server pin at or before ``bi``, or a device pin (or input) at or after ``b(i+1)``,
    rules case ``i`` out; pins inside the range become pins of its subproblem. Conflicting pins
    are rejected before solving with the same :class:`PlanningError` as ``"full"``.

    Speed: prefix and suffix sums are computed once. Cases are tried in increasing order of a
    lower bound (prefix + suffix + ``min(device, server)`` per free node + the cheapest transfer
    of the range, which some tensor must pay when the range has a node on each side) and the
    search stops when the bound reaches the best value found. Ranges that are plain chains
    (such as two adjacent boundaries) are solved by a linear scan, ranges of fewer than
    ``_SMALL_SEGMENT`` nodes by a small Edmonds-Karp, larger ones by networkx. Boundaries take
    linear time to find (see ``_boundary_positions``). A graph with several inputs or outputs
    has boundaries only after its last node without inputs and before its first node without
    consumers; a graph with none is solved by one min cut of the whole graph, as ``"full"``.

    Side nodes. Traced graphs hold nodes off the main path: dead ends that reach no model output
    (ViT's ``_assert`` chains, unused ``getattr`` of shapes and attention weights) and constants
    that no model input reaches (Swin's relative position biases, computed from parameters).
    A single one makes most boundaries disappear, since a boundary must be comparable with
    every node. So blockwise decomposes the *core* instead: the nodes reachable from an input
    that reach an output. Its ancestors and descendants within the core are those in the whole
    graph (a path between core nodes has only core nodes on it), so the boundaries above, taken
    on the core subgraph, still split every feasible placement into cases ``i``. The other nodes
    form *clusters*: connected by an edge, or consumers of the same core tensor (they share its
    transfer). A cluster touches the core only through the core nodes it consumes (``F``; only
    dead ends consume core nodes) and those it feeds (``G``; only constants feed them).

    A cluster is attached to the gap between consecutive usable boundaries ``bj < b(j+1)`` when
    ``F`` lies in ``[bj, b(j+1))`` and ``G`` in ``(bj, b(j+1)]``; :func:`_usable_boundaries` keeps
    exactly the core boundaries for which every cluster has such a gap (a cluster touching core
    nodes ``lo..hi`` blocks those strictly between, ``hi`` if in ``F``, ``lo`` if in ``G``, and a
    node in both). A cluster touching no core node is *floating*, attached to the last gap. Then
    in case ``i`` a cluster of gap ``j``:

    - ``j < i``: every core node it touches is on the device, and so are the core consumers of
      its ``F`` (no core edge skips ``b(j+1)``), so a tensor of ``F`` crosses only for the
      cluster. Its best placement given that, its value ``on_device``, is independent of every
      other choice: clusters share no tensor (they would be one cluster) and no node.
    - ``j > i``: every core node it touches is at or after ``b(i+1)``, hence a descendant of it,
      hence on the server. Its best placement given that is ``on_server``, again independent
      (core nodes on the server pay no transfer). A floating cluster's ``on_server`` is its
      best placement outright.
    - ``j = i``: each of its nodes has all inputs and consumers in ``{bi} + segment + clusters
      of gap i + {b(i+1)}``, so the range's min cut includes it exactly.

    Each cluster's two values are found once, by a min cut of the cluster with the core nodes
    it touches pinned to one side (enumeration for clusters of a few nodes), and summed into the
    prefix and suffix sums like a node's device and server time. The nodes are renumbered so
    that every range is contiguous (gap ``j``'s core nodes and clusters in graph order, between
    ``bj`` and ``b(j+1)``), which keeps the range solvers above unchanged. The rtt term: in every
    case but the last, ``b(i+1)`` is on the server, so it is paid whatever the clusters do. In
    the last case it splits in two: every cluster before ``bk`` all on the device (then the
    range decides the rtt, as before), or the clusters at their ``on_device`` value plus the
    rtt, which is exact when some cluster node is on the server and otherwise an upper bound on
    the placement it returns, never below the optimum. Pins on cluster nodes enter their two
    values (infinite when the pins cannot hold there, which rules the case out) or the range's
    cut. So the minimum over the cases is again the global optimum, exactly. The random-DAG
    tests hang dead-end chains, branches spanning several blocks, unused inputs and constants
    off the middle of the graph and compare both methods with :func:`exhaustive`.

Baselines: ``"device_only"``, ``"server_only"`` and ``"best_layerwise"`` (the best feasible prefix
of the profile order), as defined in ``docs/cost-model.md``. ``"exhaustive"`` enumerates every
feasible placement; it is a test oracle for small graphs.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx
from networkx.algorithms.flow import preflow_push

from lightning_split.planning.profile import Profile

__all__ = [
    "METHODS",
    "Breakdown",
    "Plan",
    "PlanningError",
    "baselines",
    "best_layerwise",
    "boundaries",
    "device_only",
    "exhaustive",
    "is_feasible",
    "plan",
    "series_boundaries",
    "server_only",
    "step_time",
]

METHODS = ("blockwise", "full", "exhaustive", "device_only", "server_only", "best_layerwise")
_PICOSECONDS = 1e12
_FLOW_FUNC = preflow_push
_SMALL_SEGMENT = 64  # ranges of fewer nodes are cut by _augmenting_min_cut instead of networkx
_TINY_CLUSTER = 8  # clusters of fewer nodes are placed by enumeration instead of a min cut


class PlanningError(ValueError):
    """No placement can be planned: conflicting or unknown pins, an unknown method or node name.

    The message names the nodes involved, e.g. ``"conv1 is pinned to the server but its
    consumer fc is pinned to the device"``.
    """


@dataclass(frozen=True)
class Breakdown:
    """The five terms of ``T(D, S)`` (``docs/cost-model.md``), in seconds per training step.

    Attributes:
        device_s: forward + backward time of the device nodes.
        server_s: forward + backward time of the server nodes.
        upload_s: activations crossing the cut plus gradients of server-side model outputs.
        download_s: gradients of the crossing activations plus server-side model outputs.
        rtt_s: two round trips (forward and backward) when any node runs on the server.
    """

    device_s: float
    server_s: float
    upload_s: float
    download_s: float
    rtt_s: float

    @property
    def total(self) -> float:
        """The predicted step time ``T(D, S)``: the sum of the five terms."""
        return self.device_s + self.server_s + self.upload_s + self.download_s + self.rtt_s

    def to_json(self) -> dict[str, float]:
        return {
            "device_s": self.device_s,
            "server_s": self.server_s,
            "upload_s": self.upload_s,
            "download_s": self.download_s,
            "rtt_s": self.rtt_s,
        }


@dataclass(frozen=True)
class Plan:
    """A placement and its predicted cost.

    Attributes:
        method: how it was found, one of :data:`METHODS`.
        device: names of the device nodes, in profile order.
        server: names of the server nodes, in profile order.
        cut: device nodes with at least one consumer on the server (their outputs cross), in
            profile order.
        predicted_step_s: ``T(D, S)`` of the placement, computed in float from the profile.
        breakdown: the terms of ``predicted_step_s``.
        solve_s: wall-clock seconds the planning call took.
    """

    method: str
    device: tuple[str, ...]
    server: tuple[str, ...]
    cut: tuple[str, ...]
    predicted_step_s: float
    breakdown: Breakdown
    solve_s: float

    def to_json(self, baselines: dict[str, float] | None = None) -> dict[str, Any]:
        """The ``plan --json`` object of ``docs/profile-format.md``.

        ``baselines`` (see :func:`baselines`) fills the ``"baselines"`` key; without it the key
        is left out, since a plan alone does not know the costs of the other placements.
        """
        data: dict[str, Any] = {
            "method": self.method,
            "device": list(self.device),
            "server": list(self.server),
            "cut": list(self.cut),
            "predicted_step_s": self.predicted_step_s,
            "breakdown": self.breakdown.to_json(),
        }
        if baselines is not None:
            data["baselines"] = dict(baselines)
        data["solve_s"] = self.solve_s
        return data


# ----------------------------------------------------------------------------------------------
# Cost model in float (the reference) and feasibility.


def _device_mask(profile: Profile, device: Iterable[str]) -> list[bool]:
    wanted = set(_names(device))
    unknown = wanted.difference(profile.names)
    if unknown:
        raise PlanningError(f"unknown node(s): {', '.join(sorted(unknown))}")
    return [node.name in wanted for node in profile.nodes]


def _graph(profile: Profile) -> tuple[dict[str, int], list[tuple[int, ...]]]:
    """Position of each name in graph order, and each node's distinct input positions."""
    position = {node.name: i for i, node in enumerate(profile.nodes)}
    inputs = [
        (position[node.inputs[0]],) if len(node.inputs) == 1 else tuple(dict.fromkeys(position[n] for n in node.inputs))
        for node in profile.nodes
    ]
    return position, inputs


def _breakdown(
    profile: Profile, on_device: list[bool], position: dict[str, int], inputs: list[tuple[int, ...]]
) -> Breakdown:
    nodes, link = profile.nodes, profile.link
    device_s = server_s = 0.0
    crossing: set[int] = set()
    for i, node in enumerate(nodes):
        if on_device[i]:
            device_s += node.device_s
        else:
            server_s += node.server_s
            crossing.update(u for u in inputs[i] if on_device[u])
    crossing.update(position[name] for name in profile.outputs if not on_device[position[name]])
    sent = sum(nodes[i].out_bytes for i in crossing)  # an output on the server is never a crossing device node
    return Breakdown(
        device_s=device_s,
        server_s=server_s,
        upload_s=sent / link.uplink_bytes_per_s,
        download_s=sent / link.downlink_bytes_per_s,
        rtt_s=0.0 if all(on_device) else 2.0 * link.rtt_s,
    )


def step_time(profile: Profile, device: Iterable[str]) -> Breakdown:
    """Predicted step time of any placement, feasible or not (``T`` of ``docs/cost-model.md``).

    Parameters:
        profile: the cost graph and link.
        device: names of the nodes on the device; every other node is on the server.

    Returns:
        The :class:`Breakdown`; ``.total`` is ``T(D, S)``. A tensor crossing to the server is
        charged once however many server nodes consume it; a model output on the device costs
        nothing to return.

    Raises:
        PlanningError: a name is not a node of the profile.
    """
    return _breakdown(profile, _device_mask(profile, device), *_graph(profile))


def is_feasible(profile: Profile, device: Iterable[str]) -> bool:
    """Whether a placement can run: every input node on the device and no edge server -> device.

    Raises:
        PlanningError: a name is not a node of the profile.
    """
    on_device = _device_mask(profile, device)
    _, inputs = _graph(profile)
    for i, node in enumerate(profile.nodes):
        if node.kind == "input" and not on_device[i]:
            return False
        if on_device[i] and not all(on_device[u] for u in inputs[i]):
            return False
    return True


def _names(names: Iterable[str]) -> list[str]:
    # A bare string is one name, not a sequence of one-letter names.
    return [names] if isinstance(names, str) else list(names)


def _make_plan(
    profile: Profile,
    method: str,
    device: Iterable[int],
    started: float,
    graph: tuple[dict[str, int], list[tuple[int, ...]]] | None = None,
) -> Plan:
    position, inputs = graph or _graph(profile)
    nodes = profile.nodes
    on_device = [False] * len(nodes)
    for i in device:
        on_device[i] = True
    crossing = [False] * len(nodes)
    for i, sources in enumerate(inputs):
        if not on_device[i]:
            for u in sources:
                crossing[u] = True
    breakdown = _breakdown(profile, on_device, position, inputs)
    return Plan(
        method=method,
        device=tuple(node.name for node, here in zip(nodes, on_device) if here),
        server=tuple(node.name for node, here in zip(nodes, on_device) if not here),
        cut=tuple(node.name for node, here, sent in zip(nodes, on_device, crossing) if here and sent),
        predicted_step_s=breakdown.total,
        breakdown=breakdown,
        solve_s=time.perf_counter() - started,
    )


# ----------------------------------------------------------------------------------------------
# Integer cost graph shared by the exact methods.


class _Costs:
    """The profile as arrays over graph positions, costs in integer picoseconds.

    ``srv`` includes the return trip of a model output; ``xfer`` is the round trip of a node's
    output tensor, paid when it crosses the cut.
    """

    __slots__ = (
        "consumers", "dev", "inputs", "is_input", "is_output", "n", "names", "position", "rtt2", "srv", "xfer",
    )  # fmt: skip

    def __init__(self, profile: Profile) -> None:
        nodes = profile.nodes
        self.position, self.inputs = _graph(profile)
        self.names = [node.name for node in nodes]
        self.n = len(nodes)
        self.consumers: list[list[int]] = [[] for _ in nodes]
        for w, sources in enumerate(self.inputs):
            for u in sources:
                self.consumers[u].append(w)
        scale = profile.link.seconds_per_byte_round_trip * _PICOSECONDS
        self.xfer = [round(node.out_bytes * scale) for node in nodes]
        self.dev = [round(node.device_s * _PICOSECONDS) for node in nodes]
        self.srv = [round(node.server_s * _PICOSECONDS) for node in nodes]
        self.is_output = [False] * self.n
        for v in {self.position[name] for name in profile.outputs}:
            self.srv[v] += self.xfer[v]
            self.is_output[v] = True
        self.is_input = [node.kind == "input" for node in nodes]
        self.rtt2 = round(2.0 * profile.link.rtt_s * _PICOSECONDS)

    def reordered(self, order: list[int]) -> _Costs:
        """The same costs with the nodes renumbered: new position ``p`` is old position ``order[p]``.

        ``order`` must be a topological order (every node after its inputs).
        """
        rank = [0] * self.n
        for new, old in enumerate(order):
            rank[old] = new
        other = object.__new__(_Costs)
        other.n, other.rtt2 = self.n, self.rtt2
        other.names = [self.names[v] for v in order]
        other.position = {name: p for p, name in enumerate(other.names)}
        other.inputs = [tuple(rank[u] for u in self.inputs[v]) for v in order]
        other.consumers = [[rank[w] for w in self.consumers[v]] for v in order]
        for attribute in ("xfer", "dev", "srv", "is_output", "is_input"):
            values = getattr(self, attribute)
            setattr(other, attribute, [values[v] for v in order])
        return other

    @property
    def graph(self) -> tuple[dict[str, int], list[tuple[int, ...]]]:
        return self.position, self.inputs


def _resolve_pins(costs: _Costs, pin_device: Iterable[str], pin_server: Iterable[str]) -> tuple[set[int], set[int]]:
    """Positions of the pinned nodes; raise :class:`PlanningError` if no feasible placement meets them.

    A feasible placement meeting the pins exists iff no node is pinned to both sides, no input
    is pinned to the server and no server-pinned node is an ancestor of a device-pinned one
    (then "inputs, device pins and all their ancestors" is one).
    """
    device_names, server_names = _names(pin_device), _names(pin_server)
    unknown = sorted(set(device_names + server_names).difference(costs.position))
    if unknown:
        raise PlanningError(f"pinned node(s) not in the profile: {', '.join(unknown)}")
    on_device = {costs.position[name] for name in device_names}
    on_server = {costs.position[name] for name in server_names}
    problems = [f"{costs.names[v]} is pinned to both the device and the server" for v in sorted(on_device & on_server)]
    problems += [
        f"{costs.names[v]} is a model input (always on the device) but is pinned to the server"
        for v in sorted(on_server)
        if costs.is_input[v]
    ]
    # Walk up from the device pins, remembering through which consumer each ancestor was reached.
    reached_from: dict[int, int] = {v: v for v in on_device}
    queue = deque(on_device)
    while queue:
        w = queue.popleft()
        for u in costs.inputs[w]:
            if u not in reached_from:
                reached_from[u] = w
                queue.append(u)
    for u in sorted(on_server - on_device):
        if u not in reached_from or costs.is_input[u]:
            continue
        path = [u]
        while reached_from[path[-1]] != path[-1]:
            path.append(reached_from[path[-1]])
        name, pinned = costs.names[u], costs.names[path[-1]]
        if len(path) == 2:
            problems.append(f"{name} is pinned to the server but its consumer {pinned} is pinned to the device")
        else:
            via = " -> ".join(costs.names[v] for v in path)
            problems.append(
                f"{name} is pinned to the server but its descendant {pinned} ({via}) is pinned to the device"
            )
    if problems:
        raise PlanningError("conflicting pins: " + "; ".join(problems))
    return on_device, on_server


_Edge = tuple[int, int, "int | None"]


def _cut_edges(costs: _Costs, lo: int, hi: int, on_device: set[int], on_server: set[int]) -> list[_Edge]:
    """Edges ``(u, v, capacity)`` of the cut graph of the nodes ``lo..hi``; capacity ``None`` is infinite.

    The source is ``-1``, the sink ``-2``, the auxiliary vertex of node ``v`` is ``n + v``. Every
    node of the range that is not pinned to the server must have all its consumers in the range;
    a server-pinned node's consumers outside it are ignored (it pays no transfer).
    """
    n, source, sink = costs.n, -1, -2
    edges: list[_Edge] = []
    add = edges.append
    for v in range(lo, hi + 1):
        if v in on_device:
            add((source, v, None))
        elif costs.srv[v]:
            add((source, v, costs.srv[v]))
        if v in on_server:
            add((v, sink, None))
            consumers = [w for w in costs.consumers[v] if w <= hi]
        else:
            if costs.dev[v]:
                add((v, sink, costs.dev[v]))
            consumers = costs.consumers[v]
        for w in consumers:
            add((w, v, None))
        trip = costs.xfer[v]
        if trip and consumers and v not in on_server:
            if len(consumers) == 1:
                add((v, consumers[0], trip))
            else:
                add((v, n + v, trip))
                for w in consumers:
                    add((n + v, w, None))
    return edges


def _networkx_min_cut(edges: list[_Edge]) -> tuple[int, set[int]]:
    """(value, source side) of a min cut by :func:`networkx.minimum_cut` (edges without capacity are infinite)."""
    graph = nx.DiGraph()
    graph.add_nodes_from((-1, -2))
    for u, v, capacity in edges:
        if capacity is None:
            graph.add_edge(u, v)
        else:
            graph.add_edge(u, v, capacity=capacity)
    try:
        value, (source_side, _) = nx.minimum_cut(graph, -1, -2, flow_func=_FLOW_FUNC)
    except nx.NetworkXUnbounded:  # an infinite path s -> t; _resolve_pins rules it out beforehand
        raise PlanningError("no feasible placement satisfies the pins") from None
    return int(value), source_side


def _augmenting_min_cut(edges: list[_Edge]) -> tuple[int, set[int]]:
    """(value, source side) of a min cut by shortest augmenting paths (Edmonds-Karp), for small graphs.

    A plain dict residual graph beats networkx's setup cost on segments of a few dozen vertices.
    Infinite capacities become one more than the sum of the finite ones, which no flow reaches.
    """
    source, sink = -1, -2
    infinite = 1 + sum(capacity for _, _, capacity in edges if capacity is not None)
    residual: dict[int, dict[int, int]] = {source: {}, sink: {}}
    for u, v, capacity in edges:
        out = residual.setdefault(u, {})
        out[v] = out.get(v, 0) + (infinite if capacity is None else capacity)
        residual.setdefault(v, {}).setdefault(u, 0)
    flow = 0
    # Saturate the two-edge paths s -> v -> t first: most of the flow, without a search.
    from_source = residual[source]
    for v, capacity in from_source.items():
        through = min(capacity, residual[v].get(sink, 0))
        if through:
            from_source[v] -= through
            residual[v][source] += through
            residual[v][sink] -= through
            residual[sink][v] += through
            flow += through
    while True:
        parent: dict[int, int] = {source: source}
        queue = deque([source])
        while queue and sink not in parent:
            u = queue.popleft()
            for v, capacity in residual[u].items():
                if capacity and v not in parent:
                    parent[v] = u
                    queue.append(v)
        if sink not in parent:
            if flow >= infinite:  # only an infinite path s -> t carries this much
                raise PlanningError("no feasible placement satisfies the pins")
            return flow, set(parent)
        bottleneck, v = infinite, sink
        while v != source:
            u = parent[v]
            bottleneck = min(bottleneck, residual[u][v])
            v = u
        v = sink
        while v != source:
            u = parent[v]
            residual[u][v] -= bottleneck
            residual[v][u] += bottleneck
            v = u
        flow += bottleneck


def _min_cut(
    costs: _Costs, lo: int, hi: int, on_device: set[int], on_server: set[int], small: bool
) -> tuple[int, list[int]]:
    """Minimum cut of the nodes ``lo..hi`` (see the module docstring): (value, device positions)."""
    edges = _cut_edges(costs, lo, hi, on_device, on_server)
    value, source_side = (_augmenting_min_cut if small else _networkx_min_cut)(edges)
    return value, sorted(v for v in source_side if lo <= v <= hi)


def _is_chain(costs: _Costs, lo: int, hi: int) -> bool:
    inputs, consumers = costs.inputs, costs.consumers
    return all(inputs[v] == (v - 1,) for v in range(lo + 1, hi + 1)) and all(
        len(consumers[v]) == 1 and consumers[v][0] == v + 1 for v in range(lo, hi)
    )


def _scan_chain(
    costs: _Costs, lo: int, hi: int, on_device: set[int], on_server: set[int], server_elsewhere: bool
) -> tuple[int, list[int]]:
    """Exact optimum of a chain ``lo -> lo+1 -> ... -> hi`` by trying every split (``D = lo..j``)."""
    first = max((v for v in on_device if lo <= v <= hi), default=lo - 1)
    last = min((v for v in on_server if lo <= v <= hi), default=hi + 1) - 1
    dev, srv, xfer, rtt2 = costs.dev, costs.srv, costs.xfer, costs.rtt2
    running = sum(dev[lo : first + 1]) + sum(srv[first + 1 : hi + 1])
    best_value, best_j = -1, first
    for j in range(first, last + 1):
        if j > first:
            running += dev[j] - srv[j]
        value = running
        if lo <= j < hi:
            value += xfer[j]
        if j < hi or server_elsewhere:
            value += rtt2
        if best_value < 0 or value < best_value:
            best_value, best_j = value, j
    return best_value, list(range(lo, best_j + 1))


def _solve_range(
    costs: _Costs,
    lo: int,
    hi: int,
    on_device: set[int],
    on_server: set[int],
    server_elsewhere: bool,
    blockwise: bool,
) -> tuple[int, list[int]]:
    """Optimal placement of the nodes ``lo..hi`` including the rtt term: (integer cost, device positions).

    ``server_elsewhere`` says that some node outside the range is on the server, so the rtt
    term is paid whatever happens here; otherwise it is paid iff this range puts a node there.
    ``blockwise`` allows the shortcuts for chains and small segments; without it the range is
    solved by :func:`networkx.minimum_cut` (the ``"full"`` method).
    """
    if blockwise and _is_chain(costs, lo, hi):
        return _scan_chain(costs, lo, hi, on_device, on_server, server_elsewhere)
    small = blockwise and hi - lo < _SMALL_SEGMENT
    value, device = _min_cut(costs, lo, hi, on_device, on_server, small)
    any_server = len(device) < hi - lo + 1
    if any_server or server_elsewhere:
        value += costs.rtt2
    if any_server and not server_elsewhere and not any(lo <= v <= hi for v in on_server):
        all_device = sum(costs.dev[lo : hi + 1])
        if all_device <= value:
            return all_device, list(range(lo, hi + 1))
    return value, device


# ----------------------------------------------------------------------------------------------
# Boundaries and the blockwise method.


def _boundary_positions(costs: _Costs) -> list[int]:
    """Positions of the boundary nodes, in O(nodes + edges).

    In graph order, ``b`` at position ``p`` is a boundary iff (a) no edge ``(u, w)`` has
    ``u < p < w``, (b) every node before ``p`` has a consumer and (c) every node after ``p``
    has an input. Necessity: ancestors of ``b`` lie before it and descendants after, so by
    the definition the nodes before ``p`` are exactly its ancestors (each has a path to ``b``,
    hence a consumer) and those after are its descendants (each has an input); an edge over
    ``p`` would run from an ancestor to a descendant. Sufficiency: by (a), consumers of nodes
    before ``p`` are at or before ``p``, so backwards from ``p`` each such node has a consumer
    that is ``b`` or a later ancestor of ``b`` (b); likewise forwards each node after ``p`` has an
    input that is ``b`` or an earlier descendant (c); and (a) is the no-skip condition.
    (a) is a sweep over a difference array of open edges; (b) and (c) compare ``p`` with the
    first node without consumers and the last node without inputs.
    """
    n = costs.n
    opened = [0] * (n + 1)
    last_source, first_sink = -1, n
    for w in range(n):
        sources = costs.inputs[w]
        if not sources:
            last_source = w
        for u in sources:
            opened[u + 1] += 1
            opened[w] -= 1
        if first_sink == n and not costs.consumers[w]:
            first_sink = w
    result = []
    spanning = 0
    for p in range(n):
        spanning += opened[p]
        if spanning == 0 and last_source <= p <= first_sink:
            result.append(p)
    return result


def boundaries(profile: Profile) -> list[str]:
    """Names of the boundary nodes of the profile's graph, in graph order.

    A node ``b`` is a boundary iff every other node is an ancestor or a descendant of ``b`` and
    no edge runs from a strict ancestor of ``b`` to a strict descendant (none skips it). On a
    ResNet these are the outputs of the residual blocks. Runs in linear time; see
    ``_boundary_positions`` for the proof.
    """
    costs = _Costs(profile)
    return [costs.names[p] for p in _boundary_positions(costs)]


def _core_mask(costs: _Costs) -> list[bool]:
    """Which nodes are *core*: reachable from a model input and reaching a model output (two searches)."""

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


@dataclass
class _Cluster:
    """A connected group of non-core nodes and the core nodes it touches (original positions).

    ``feeds_on``: core nodes consumed by the cluster (F). ``feeds``: core nodes it feeds (G).
    ``gap``: index of the gap between usable boundaries it is attached to (set by the layout).
    ``on_device`` / ``on_server``: ``(value, device nodes)`` of its best placement with every
    core node it touches on that side, or ``None`` if the pins make that impossible.
    """

    nodes: list[int]
    feeds_on: set[int]
    feeds: set[int]
    gap: int = 0
    on_device: tuple[int, list[int]] | None = None
    on_server: tuple[int, list[int]] | None = None

    @property
    def touched(self) -> set[int]:
        return self.feeds_on | self.feeds


def _clusters(costs: _Costs, core: list[bool]) -> list[_Cluster]:
    """Group the non-core nodes: linked by an edge, or consumers of the same core node (union-find)."""
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
    groups: dict[int, _Cluster] = {}
    for v in range(costs.n):
        if not core[v]:
            cluster = groups.setdefault(find(v), _Cluster([], set(), set()))
            cluster.nodes.append(v)
            cluster.feeds_on.update(u for u in costs.inputs[v] if core[u])
            cluster.feeds.update(w for w in costs.consumers[v] if core[w])
    return list(groups.values())


def _usable_boundaries(costs: _Costs, core: list[bool], clusters: list[_Cluster]) -> list[int]:
    """Positions of the boundaries of the core graph that no cluster straddles, in O(nodes + edges).

    The core part is :func:`_boundary_positions` on the core subgraph (reachability among core
    nodes is the same in the subgraph: a path between core nodes has only core nodes on it).
    A cluster touching core nodes ``lo..hi`` blocks the boundaries strictly between, ``hi`` if it
    consumes ``hi`` and ``lo < hi``, ``lo`` if it feeds ``lo`` and ``lo < hi``, and a node it both
    consumes and feeds; see the module docstring for why.
    """
    n = costs.n
    opened = [0] * (n + 1)
    last_source, first_sink = -1, n
    for w in range(n):
        if not core[w]:
            continue
        sources = costs.inputs[w]
        if not any(core[u] for u in sources):
            last_source = w
        for u in sources:
            if core[u]:
                opened[u + 1] += 1
                opened[w] -= 1
        if first_sink == n and not any(core[v] for v in costs.consumers[w]):
            first_sink = w
    for cluster in clusters:
        touched = cluster.touched
        if not touched:
            continue
        lo, hi = min(touched), max(touched)
        start = lo if lo in cluster.feeds and lo < hi else lo + 1
        stop = hi + 1 if hi in cluster.feeds_on and lo < hi else hi
        if start < stop:
            opened[start] += 1
            opened[stop] -= 1
        for v in cluster.feeds_on & cluster.feeds:
            opened[v] += 1
            opened[v + 1] -= 1
    result = []
    spanning = 0
    for p in range(n):
        spanning += opened[p]
        if core[p] and spanning == 0 and last_source <= p <= first_sink:
            result.append(p)
    return result


def series_boundaries(profile: Profile) -> list[str]:
    """Names of the nodes the ``"blockwise"`` method decomposes the graph at, in graph order.

    These are the boundaries of the *core* graph (nodes reachable from a model input that reach
    a model output) that no cluster of the other nodes (dead ends such as ``_assert`` calls,
    constants computed from parameters) straddles; see the module docstring. On a graph whose
    nodes are all core they are exactly :func:`boundaries`.
    """
    costs = _Costs(profile)
    core = _core_mask(costs)
    return [costs.names[p] for p in _usable_boundaries(costs, core, _clusters(costs, core))]


_INFEASIBLE = 1 << 120  # an integer cost no placement reaches: marks a case that the pins rule out


def _cluster_cut(
    costs: _Costs, cluster: _Cluster, core_on_device: bool, must_device: set[int], on_server: set[int]
) -> tuple[int, list[int]] | None:
    """Best placement of a cluster with all the core nodes it touches on one side: (value, device nodes).

    The value counts the cluster's own compute and transfers and, when the core nodes are on
    the device, the transfers of the core tensors it consumes (none of their core consumers is
    on the server in the cases that use this value). ``None`` if the pins make it infeasible.
    Clusters of fewer than ``_TINY_CLUSTER`` nodes are enumerated, larger ones cut.
    """
    if len(cluster.nodes) < _TINY_CLUSTER:
        return _enumerate_cluster(costs, cluster, core_on_device, must_device, on_server)
    n, source, sink = costs.n, -1, -2
    members = set(cluster.nodes)
    edges: list[_Edge] = []
    add = edges.append
    for v in cluster.nodes:
        if v in must_device:
            add((source, v, None))
        elif costs.srv[v]:
            add((source, v, costs.srv[v]))
        if v in on_server:
            add((v, sink, None))
        elif costs.dev[v]:
            add((v, sink, costs.dev[v]))
    for u in cluster.touched:
        add((source, u, None) if core_on_device else (u, sink, None))
    for v in itertools.chain(cluster.nodes, cluster.feeds_on):
        consumers = costs.consumers[v] if v in members else [w for w in costs.consumers[v] if w in members]
        for w in consumers:
            add((w, v, None))
        trip = costs.xfer[v]
        if trip and consumers and (v in members or core_on_device):
            add((v, n + v, trip))
            for w in consumers:
                add((n + v, w, None))
    solve = _augmenting_min_cut if len(cluster.nodes) < _SMALL_SEGMENT else _networkx_min_cut
    try:
        value, source_side = solve(edges)
    except PlanningError:
        return None
    return value, [v for v in cluster.nodes if v in source_side]


def _enumerate_cluster(
    costs: _Costs, cluster: _Cluster, core_on_device: bool, must_device: set[int], on_server: set[int]
) -> tuple[int, list[int]] | None:
    """:func:`_cluster_cut` by trying every feasible placement; for clusters of a few nodes.

    Nodes are decided in reverse graph order, as in :func:`exhaustive`: a node may go to the
    server only if its consumers are all there, and to the device only if no input of it is
    on the server (core inputs are on the server iff ``core_on_device`` is false).
    """
    nodes = cluster.nodes
    members = set(nodes)
    dev, srv, xfer = costs.dev, costs.srv, costs.xfer
    member_consumers = [[w for w in costs.consumers[v] if w in members] for v in nodes]
    feeds_core = [any(w not in members for w in costs.consumers[v]) for v in nodes]
    eats_core = [any(u not in members for u in costs.inputs[v]) for v in nodes]
    shared = [(xfer[u], [w for w in costs.consumers[u] if w in members]) for u in cluster.feeds_on if core_on_device]
    in_server: dict[int, bool] = {}
    best: list[Any] = [_INFEASIBLE, None]

    def visit(i: int, cost: float) -> None:
        if cost >= best[0]:
            return
        if i < 0:
            cost += sum(trip for trip, consumers in shared if any(in_server[w] for w in consumers))
            if cost < best[0]:
                best[0], best[1] = cost, [v for v in nodes if not in_server[v]]
            return
        v, consumers = nodes[i], member_consumers[i]
        if v not in on_server and (core_on_device or not eats_core[i]):
            crossing = any(in_server[w] for w in consumers) or (feeds_core[i] and not core_on_device)
            in_server[v] = False
            visit(i - 1, cost + dev[v] + (xfer[v] if crossing else 0))
        if v not in must_device and all(in_server[w] for w in consumers) and not (feeds_core[i] and core_on_device):
            in_server[v] = True
            visit(i - 1, cost + srv[v])

    visit(len(nodes) - 1, 0)
    return None if best[1] is None else (best[0], best[1])


class _Layout:
    """The series decomposition of a cost graph with its non-core clusters (see the module docstring).

    ``costs`` is the graph renumbered so that each range between consecutive usable boundaries
    is contiguous: gap ``g`` (0 before the first boundary, ``g`` after boundary ``g``) holds the
    core nodes strictly between its boundaries and the clusters attached to it, in graph order;
    floating clusters (touching no core node) join the last gap. ``order[p]`` is the original
    position of new position ``p``; ``bounds`` are new positions.
    """

    def __init__(self, costs: _Costs, must_device: set[int], on_server: set[int]) -> None:
        core = _core_mask(costs)
        if all(core):  # the common case: no side nodes, the boundaries of the whole graph
            clusters, bounds = [], _boundary_positions(costs)
        else:
            clusters = _clusters(costs, core)
            bounds = _usable_boundaries(costs, core, clusters)
        self.clusters = clusters
        if not bounds or not clusters:
            self.costs, self.order, self.bounds, self.core = costs, list(range(costs.n)), bounds, core
            return
        is_bound = set(bounds)
        gaps: list[list[int]] = [[] for _ in range(len(bounds) + 1)]
        for v in range(costs.n):
            if core[v] and v not in is_bound:
                gaps[bisect.bisect_right(bounds, v)].append(v)
        for cluster in clusters:
            touched = cluster.touched
            if touched:
                lo = min(touched)
                cluster.gap = bisect.bisect_right(bounds, lo) - (lo in is_bound and lo in cluster.feeds)
            else:
                cluster.gap = len(bounds)
            gaps[cluster.gap].extend(cluster.nodes)
            cluster.on_device = _cluster_cut(costs, cluster, True, must_device, on_server)
            cluster.on_server = _cluster_cut(costs, cluster, False, must_device, on_server)
        order = sorted(gaps[0])
        for b, gap in zip(bounds, gaps[1:]):
            order.append(b)
            order.extend(sorted(gap))
        self.order = order
        self.costs = costs.reordered(order)
        rank = {old: new for new, old in enumerate(order)}
        self.bounds = [rank[b] for b in bounds]
        self.core = [core[v] for v in order]


def _blockwise(costs: _Costs, on_device: set[int], on_server: set[int]) -> list[int]:
    """Device positions of an optimal placement by series decomposition at the usable boundaries."""
    must_device = on_device | {v for v in range(costs.n) if costs.is_input[v]}
    layout = _Layout(costs, must_device, on_server)
    if not layout.bounds:
        return _solve_range(costs, 0, costs.n - 1, must_device, on_server, False, True)[1]
    order, bounds, core, clusters = layout.order, layout.bounds, layout.core, layout.clusters
    last_of: dict[int, _Cluster] = {}  # a cluster's last new position -> the cluster
    if clusters:
        rank = {old: new for new, old in enumerate(order)}
        must_device = {rank[v] for v in must_device}
        on_server = {rank[v] for v in on_server}
        last_of = {rank[cluster.nodes[-1]]: cluster for cluster in clusters}
    costs = layout.costs
    n, k = costs.n, len(bounds)
    dev, srv, xfer, rtt2 = costs.dev, costs.srv, costs.xfer, costs.rtt2

    # plain_device: every node on the device. prefix_device / suffix_server: core nodes on one
    # side, each cluster at its best value for that side, counted at its last node.
    plain_device = [0] * (n + 1)
    prefix_device = [0] * (n + 1)
    prefix_cheapest = [0] * (n + 1)
    for v in range(n):
        plain_device[v + 1] = plain_device[v] + dev[v]
        prefix_cheapest[v + 1] = prefix_cheapest[v] + min(dev[v], srv[v])
        lump = dev[v] if core[v] else 0
        if v in last_of:
            lump = _INFEASIBLE if last_of[v].on_device is None else last_of[v].on_device[0]
        prefix_device[v + 1] = prefix_device[v] + lump
    suffix_server = [0] * (n + 1)
    for v in range(n - 1, -1, -1):
        lump = srv[v] if core[v] else 0
        if v in last_of:
            lump = _INFEASIBLE if last_of[v].on_server is None else last_of[v].on_server[0]
        suffix_server[v] = suffix_server[v + 1] + lump
    last_core_device = max((v for v in must_device if core[v]), default=-1)
    first_core_server = min((v for v in on_server if core[v]), default=n)
    first_server = min(on_server, default=n)
    has_cluster = [False] * (k + 1)
    for cluster in clusters:
        has_cluster[cluster.gap] = True

    # (lower bound, constant outside the range, case, lo, hi, pinned device, pinned server,
    #  server elsewhere, prefix clusters all on the device)
    candidates: list[tuple[int, int, int, int, int, set[int], set[int], bool, bool]] = []

    def add(case: int, constant: int, server_elsewhere: bool, all_device_before: bool) -> None:
        lo = bounds[case - 1] if case > 0 else 0
        hi = bounds[case] if case < k else n - 1
        left = lo if case > 0 else None
        right = hi if case < k else None
        pinned_device = {v for v in must_device if lo <= v <= hi}
        pinned_server = {v for v in on_server if lo <= v <= hi}
        lower = constant + prefix_cheapest[hi + 1] - prefix_cheapest[lo] + rtt2
        if left is not None:
            lower += dev[left] - min(dev[left], srv[left])
            pinned_device.add(left)
        if right is not None:
            lower += srv[right] - min(dev[right], srv[right])
            pinned_server.add(right)
        # Some tensor of the range crosses when a device node has a path to a server node: from
        # `left` to `right`; from a core device node (an ancestor of `right`) in the first range;
        # from `left` to any server node in a last range of core nodes only.
        if left is not None and right is not None:
            crossing = True
        elif right is not None:
            crossing = any(core[v] for v in pinned_device)
        else:
            crossing = not has_cluster[k] and (bool(pinned_server) or not server_elsewhere)
        if crossing and lo < hi:
            lower += min(xfer[lo:hi])
        if right is None and not pinned_server:
            all_device = constant + plain_device[hi + 1] - plain_device[lo] + (rtt2 if server_elsewhere else 0)
            lower = min(lower, all_device)
        candidates.append(
            (lower, constant, case, lo, hi, pinned_device, pinned_server, server_elsewhere, all_device_before)
        )

    if last_core_device < bounds[0]:
        add(0, suffix_server[bounds[0] + 1], True, False)
    for case in range(1, k):
        left, right = bounds[case - 1], bounds[case]
        if first_core_server > left and last_core_device < right:
            add(case, prefix_device[left] + suffix_server[right + 1], True, False)
    last = bounds[-1]
    if first_core_server > last:
        if first_server > last:
            add(k, plain_device[last], False, True)
        if prefix_device[last] < plain_device[last] or first_server < last:
            add(k, prefix_device[last], True, False)  # some cluster before `last` uses the server

    candidates.sort(key=lambda candidate: candidate[0])
    best_value, best = -1, None
    for candidate in candidates:
        lower, constant, case, lo, hi, pinned_device, pinned_server, server_elsewhere, _ = candidate
        if best_value >= 0 and lower >= best_value:
            break
        if constant >= _INFEASIBLE:
            continue
        value, device = _solve_range(costs, lo, hi, pinned_device, pinned_server, server_elsewhere, True)
        if best_value < 0 or constant + value < best_value:
            best_value, best = constant + value, (candidate, device)
    assert best is not None  # _resolve_pins guarantees a feasible placement, which lies in some case
    (_, _, case, lo, hi, _, _, _, all_device_before), device = best
    placed = [order[v] for v in device]
    placed += [order[v] for v in range(lo) if core[v]]
    for cluster in clusters:
        if cluster.gap < case:
            placed += cluster.nodes if all_device_before else cluster.on_device[1]
        elif cluster.gap > case:
            placed += cluster.on_server[1]
    return sorted(placed)


# ----------------------------------------------------------------------------------------------
# Public planners.


def plan(
    profile: Profile,
    method: str = "blockwise",
    pin_device: Iterable[str] = (),
    pin_server: Iterable[str] = (),
) -> Plan:
    """Plan a placement of minimum predicted step time.

    Parameters:
        profile: the cost graph and link.
        method: ``"blockwise"`` (exact, fast: series decomposition at boundaries), ``"full"``
            (exact: one min cut of the whole graph), ``"exhaustive"`` (exact, brute force, small
            graphs only) or a baseline: ``"device_only"``, ``"server_only"``, ``"best_layerwise"``.
        pin_device: names of nodes that must run on the device (exact methods only).
        pin_server: names of nodes that must run on the server (exact methods only).

    Returns:
        A :class:`Plan`. Both exact methods reach the same optimal ``T`` (up to the picosecond
        rounding of the costs); when several placements tie, either may be returned.

    Raises:
        PlanningError: an unknown method or pinned name, pins on a baseline, or pins that no
            feasible placement satisfies (the message names the conflicting nodes).

    Examples:
        >>> from lightning_split.planning.profile import Link, chain_profile
        >>> profile = chain_profile([1.0, 8.0], [1.0, 1.0], [10, 10], Link(10.0, 10.0), input_bytes=100)
        >>> result = plan(profile)
        >>> result.device, result.cut, result.predicted_step_s
        (('x', 'n0'), ('n0',), 6.0)
    """
    started = time.perf_counter()
    if method == "exhaustive":
        return exhaustive(profile, pin_device, pin_server)
    if method in ("device_only", "server_only", "best_layerwise"):
        if _names(pin_device) or _names(pin_server):
            raise PlanningError(f"pins apply to the blockwise, full and exhaustive methods, not to {method}")
        return {"device_only": device_only, "server_only": server_only, "best_layerwise": best_layerwise}[method](
            profile
        )
    if method not in ("blockwise", "full"):
        raise PlanningError(f"unknown planning method {method!r}; expected one of {', '.join(METHODS)}")
    costs = _Costs(profile)
    on_device, on_server = _resolve_pins(costs, pin_device, pin_server)
    if costs.n == 0:
        device: list[int] = []
    elif method == "full":
        must_device = on_device | {v for v in range(costs.n) if costs.is_input[v]}
        device = _solve_range(costs, 0, costs.n - 1, must_device, on_server, False, False)[1]
    else:
        device = _blockwise(costs, on_device, on_server)
    return _make_plan(profile, method, device, started, costs.graph)


def exhaustive(
    profile: Profile,
    pin_device: Iterable[str] = (),
    pin_server: Iterable[str] = (),
    max_nodes: int = 20,
    max_placements: int | None = None,
) -> Plan:
    """The optimum by brute force over every feasible placement (a test oracle for small graphs).

    Feasible device sets are closed under ancestors. They are enumerated deciding nodes in
    reverse graph order: a node may go to the server only if all its consumers are there, and
    a device node pays its transfer iff one of its (already decided) consumers is on the server.
    Costs are accumulated in float, independently of the integer min-cut machinery. The work
    grows with the number of feasible placements: linearly along a chain, exponentially with
    the number of parallel branches. The recursion is as deep as the graph has nodes.

    Raises:
        PlanningError: the profile has more than ``max_nodes`` nodes, more than ``max_placements``
            feasible placements (when given), or the pins conflict.
    """
    started = time.perf_counter()
    if len(profile.nodes) > max_nodes:
        raise PlanningError(
            f"exhaustive planning is limited to {max_nodes} nodes; this profile has {len(profile.nodes)}"
        )
    costs = _Costs(profile)
    on_device, on_server = _resolve_pins(costs, pin_device, pin_server)
    nodes = profile.nodes
    outputs = set(profile.outputs)
    per_byte = profile.link.seconds_per_byte_round_trip
    rtt = 2.0 * profile.link.rtt_s
    in_server = [False] * len(nodes)
    best: list[Any] = [math.inf, None]
    visited = [0]

    def visit(v: int, cost: float, servers: int) -> None:
        if v < 0:
            visited[0] += 1
            if max_placements is not None and visited[0] > max_placements:
                raise PlanningError(f"exhaustive planning stopped after {max_placements} placements")
            total = cost + (rtt if servers else 0.0)
            if total < best[0]:
                best[0], best[1] = total, [i for i in range(len(nodes)) if not in_server[i]]
            return
        node = nodes[v]
        consumers = costs.consumers[v]
        if v not in on_server:
            crossing = any(in_server[w] for w in consumers)
            visit(v - 1, cost + node.device_s + (node.out_bytes * per_byte if crossing else 0.0), servers)
        if node.kind != "input" and v not in on_device and all(in_server[w] for w in consumers):
            in_server[v] = True
            trip = node.out_bytes * per_byte if node.name in outputs else 0.0
            visit(v - 1, cost + node.server_s + trip, servers + 1)
            in_server[v] = False

    visit(len(nodes) - 1, 0.0, 0)
    if best[1] is None:
        raise PlanningError("no feasible placement satisfies the pins")
    return _make_plan(profile, "exhaustive", best[1], started, costs.graph)


def device_only(profile: Profile) -> Plan:
    """Baseline: every node on the device (no network at all)."""
    started = time.perf_counter()
    return _make_plan(profile, "device_only", range(len(profile.nodes)), started)


def server_only(profile: Profile) -> Plan:
    """Baseline: only the input nodes on the device; the inputs are uploaded and all compute is remote."""
    started = time.perf_counter()
    return _make_plan(
        profile, "server_only", [i for i, node in enumerate(profile.nodes) if node.kind == "input"], started
    )


def best_layerwise(profile: Profile) -> Plan:
    """Baseline: the best single split point of the profile order (``D`` = the first ``k`` nodes).

    This is the classic partition of a chain; on a DAG whose graph order interleaves branches it
    can be strictly worse than the optimum, since ``D`` must be a prefix of the order. ``k``
    ranges over the prefixes that hold every input node; all ``T`` are computed in one pass
    (each tensor crosses for the ``k`` between its producer and its last consumer).
    """
    started = time.perf_counter()
    nodes = profile.nodes
    n = len(nodes)
    position, inputs = graph = _graph(profile)
    per_byte = profile.link.seconds_per_byte_round_trip
    last_consumer = list(range(n))
    for w, sources in enumerate(inputs):
        for u in sources:
            last_consumer[u] = w
    # delta[k]: change of the bytes crossing when the prefix grows to k nodes (u crosses for k in u+1..last).
    delta = [0] * (n + 2)
    for u, node in enumerate(nodes):
        if last_consumer[u] > u:
            delta[u + 1] += node.out_bytes
            delta[last_consumer[u] + 1] -= node.out_bytes
    returned = [0] * (n + 1)
    for v in {position[name] for name in profile.outputs}:
        returned[v] = nodes[v].out_bytes
    server_tail = [0.0] * (n + 1)
    for v in range(n - 1, -1, -1):
        server_tail[v] = server_tail[v + 1] + nodes[v].server_s
        returned[v] += returned[v + 1]
    first_k = max((i + 1 for i, node in enumerate(nodes) if node.kind == "input"), default=0)
    device_head = sum(node.device_s for node in nodes[:first_k])
    crossing = sum(delta[: first_k + 1])
    best_k, best_total = n, math.inf
    for k in range(first_k, n + 1):
        if k > first_k:
            device_head += nodes[k - 1].device_s
            crossing += delta[k]
        total = device_head + server_tail[k] + (crossing + returned[k]) * per_byte
        if k < n:
            total += 2.0 * profile.link.rtt_s
        if total < best_total:
            best_k, best_total = k, total
    return _make_plan(profile, "best_layerwise", range(best_k), started, graph)


def baselines(profile: Profile) -> dict[str, float]:
    """Predicted step times of the three baselines: ``device_only``, ``server_only``, ``best_layerwise``."""
    return {
        "device_only": device_only(profile).predicted_step_s,
        "server_only": server_only(profile).predicted_step_s,
        "best_layerwise": best_layerwise(profile).predicted_step_s,
    }
