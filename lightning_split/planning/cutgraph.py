"""The integer cost graph and the one builder of its s-t cut graph, shared by every exact solver.

:class:`CostGraph` holds a profile as arrays over graph positions, costs in integer
picoseconds (networkx's flow algorithms are not exact with float capacities, so every capacity
is an integer; the exact methods all minimise that same integer objective, and a
:class:`~lightning_split.planning.costmodel.Plan`'s prediction is recomputed in float from the
profile). :func:`resolve_pins` checks the user's pins. :func:`cut_edges` builds the cut graph of
a set of nodes, whose minimum cut (:func:`~lightning_split.planning.mincut.min_cut`) is their
optimal placement up to the rtt term. The source ``s`` is the device side, the sink ``t`` the
server side; a node on the source side of the cut is in ``D``.

- ``s -> v`` with capacity ``server_s(v)``, plus ``out_bytes(v) * (1/up + 1/down)`` when ``v`` is
  a model output: cut exactly when ``v`` is in ``S``.
- ``v -> t`` with capacity ``device_s(v)``: cut exactly when ``v`` is in ``D``.
- for each data edge ``u -> w``, an infinite edge ``w -> u``: a cut with ``u`` in ``S`` and ``w``
  in ``D`` is infinite, so finite cuts are exactly the feasible placements.
- for each node ``u`` with consumers, ``u -> a_u`` with capacity ``out_bytes(u) * (1/up +
  1/down)`` and infinite ``a_u -> w`` for each consumer ``w`` (with a single consumer the
  auxiliary vertex is dropped: ``u -> w`` carries the capacity). If some consumer is in ``S``,
  ``a_u`` must be on the sink side (else ``a_u -> w`` is cut), so ``u -> a_u`` is cut iff ``u``
  is in ``D``; if every consumer is in ``D``, the minimum puts ``a_u`` on the source side for
  free. Hence the transfer is paid once per tensor, only when it crosses.
- input nodes and ``pin_device`` get infinite ``s -> v``; ``pin_server`` infinite ``v -> t``.

So for every feasible ``D``, the cheapest cut whose source side holds exactly the nodes of ``D``
costs ``cut(D) = T(D, S) - rtt(S)`` where ``rtt(S) = 2 * rtt_s`` if ``S`` is not empty, else 0.
The rtt term is not a sum over nodes and is added afterwards: let ``D*`` be the min cut, of
value ``c*``. If ``S*`` is empty, ``c* = T(all device) <= cut(D) <= T(D)`` for every ``D``:
all-device is optimal. Otherwise every placement with ``S`` non-empty costs ``cut(D) + 2 rtt >=
c* + 2 rtt = T(D*)``, and the only placement with ``S`` empty is all-device; so ``min(T(D*),
T(all device))`` is the optimum (all-device only when no node is pinned to the server). See
:func:`lightning_split.planning.ranges.solve_range`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Sequence

from lightning_split.planning.costmodel import PlanningError, as_names, graph_positions
from lightning_split.planning.mincut import SINK, SOURCE, Edge
from lightning_split.planning.profile import Profile

__all__ = ["INFEASIBLE", "PICOSECONDS", "CostGraph", "cut_edges", "resolve_pins"]

PICOSECONDS = 1e12
INFEASIBLE = 1 << 120
"""An integer cost no placement reaches: marks a placement or a case that the pins rule out."""


class CostGraph:
    """The profile as arrays over graph positions, costs in integer picoseconds.

    ``srv`` includes the return trip of a model output; ``xfer`` is the round trip of a node's
    output tensor, paid when it crosses the cut. ``inputs[v]`` are the distinct input positions
    of ``v``, ``consumers[v]`` the positions of the nodes that consume it, in graph order.
    """

    __slots__ = (
        "consumers", "dev", "inputs", "is_input", "is_output", "n", "names", "position", "rtt2", "srv", "xfer",
    )  # fmt: skip

    def __init__(self, profile: Profile) -> None:
        nodes = profile.nodes
        self.position, self.inputs = graph_positions(profile)
        self.names = [node.name for node in nodes]
        self.n = len(nodes)
        self.consumers: list[list[int]] = [[] for _ in nodes]
        for w, sources in enumerate(self.inputs):
            for u in sources:
                self.consumers[u].append(w)
        scale = profile.link.seconds_per_byte_round_trip * PICOSECONDS
        self.xfer = [round(node.out_bytes * scale) for node in nodes]
        self.dev = [round(node.device_s * PICOSECONDS) for node in nodes]
        self.srv = [round(node.server_s * PICOSECONDS) for node in nodes]
        self.is_output = [False] * self.n
        for v in {self.position[name] for name in profile.outputs}:
            self.srv[v] += self.xfer[v]
            self.is_output[v] = True
        self.is_input = [node.kind == "input" for node in nodes]
        self.rtt2 = round(2.0 * profile.link.rtt_s * PICOSECONDS)

    def reordered(self, order: list[int]) -> CostGraph:
        """The same costs with the nodes renumbered: new position ``p`` is old position ``order[p]``.

        ``order`` must be a topological order (every node after its inputs).
        """
        rank = [0] * self.n
        for new, old in enumerate(order):
            rank[old] = new
        other = object.__new__(CostGraph)
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
        """The profile's :func:`~lightning_split.planning.costmodel.graph_positions`."""
        return self.position, self.inputs

    def with_inputs(self, on_device: set[int]) -> set[int]:
        """``on_device`` plus every input node: the nodes pinned to the device, by the user or by being inputs."""
        return on_device | {v for v in range(self.n) if self.is_input[v]}


def resolve_pins(costs: CostGraph, pin_device: Iterable[str], pin_server: Iterable[str]) -> tuple[set[int], set[int]]:
    """Positions of the pinned nodes; raise :class:`PlanningError` if no feasible placement meets them.

    A feasible placement meeting the pins exists iff no node is pinned to both sides, no input
    is pinned to the server and no server-pinned node is an ancestor of a device-pinned one
    (then "inputs, device pins and all their ancestors" is one).
    """
    device_names, server_names = as_names(pin_device), as_names(pin_server)
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
    problems += _server_pins_above_device_pins(costs, on_device, on_server)
    if problems:
        raise PlanningError("conflicting pins: " + "; ".join(problems))
    return on_device, on_server


def _server_pins_above_device_pins(costs: CostGraph, on_device: set[int], on_server: set[int]) -> list[str]:
    """One message per server-pinned node that is an ancestor of a device-pinned one, naming the path."""
    # Walk up from the device pins, remembering through which consumer each ancestor was reached.
    reached_from: dict[int, int] = {v: v for v in on_device}
    queue = deque(on_device)
    while queue:
        w = queue.popleft()
        for u in costs.inputs[w]:
            if u not in reached_from:
                reached_from[u] = w
                queue.append(u)
    problems = []
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
    return problems


def cut_edges(
    costs: CostGraph,
    nodes: Sequence[int],
    on_device: Collection[int],
    on_server: Collection[int],
    fixed: Collection[int] = (),
    fixed_on_device: bool = True,
) -> list[Edge]:
    """Edges of the cut graph (see the module docstring) that places the nodes ``nodes``.

    Parameters:
        costs: the cost graph.
        nodes: the positions to place, each paying its compute on its side and its tensor's
            transfer when a consumer is on the other side. A node not pinned to the server
            must have all its consumers among ``nodes`` and ``fixed``; a server-pinned node's
            consumers elsewhere are ignored (it pays no transfer).
        on_device: positions pinned to the device (infinite ``s -> v``); may hold other nodes.
        on_server: positions pinned to the server (infinite ``v -> t``); may hold other nodes.
        fixed: positions outside ``nodes`` whose side is already decided (``fixed_on_device``),
            whose own compute is not counted; their consumers among ``nodes`` must follow the
            data edges, and, when they are on the device, their tensors pay the transfer when
            such a consumer is on the server.

    Returns:
        ``(u, v, capacity)`` triples, capacity ``None`` for infinite; the auxiliary vertex of
        node ``v`` is ``costs.n + v``.
    """
    members = nodes if isinstance(nodes, range) else set(nodes)
    edges: list[Edge] = []
    add = edges.append
    for v in nodes:
        if v in on_device:
            add((SOURCE, v, None))
        elif costs.srv[v]:
            add((SOURCE, v, costs.srv[v]))
        if v in on_server:
            add((v, SINK, None))
            consumers = [w for w in costs.consumers[v] if w in members or w in fixed]
        else:
            if costs.dev[v]:
                add((v, SINK, costs.dev[v]))
            consumers = costs.consumers[v]
        _add_tensor(costs, edges, v, consumers, pays=v not in on_server)
    for u in fixed:
        add((SOURCE, u, None) if fixed_on_device else (u, SINK, None))
        _add_tensor(costs, edges, u, [w for w in costs.consumers[u] if w in members], pays=fixed_on_device)
    return edges


def _add_tensor(costs: CostGraph, edges: list[Edge], v: int, consumers: list[int], pays: bool) -> None:
    """The edges of ``v``'s output tensor: each consumer follows it, and its transfer when ``pays``."""
    for w in consumers:
        edges.append((w, v, None))
    trip = costs.xfer[v]
    if trip and consumers and pays:
        if len(consumers) == 1:
            edges.append((v, consumers[0], trip))
        else:
            edges.append((v, costs.n + v, trip))
            for w in consumers:
                edges.append((costs.n + v, w, None))
