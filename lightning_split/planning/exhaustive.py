"""Enumeration of feasible placements: the brute-force ``"exhaustive"`` method, a test oracle for small graphs.

:func:`cheapest_placement` is the one enumerator. Feasible device sets are closed under
ancestors, so they are enumerated deciding nodes in reverse graph order: a node may go to the
server only if all its consumers are there, and a device node pays its transfer iff one of its
(already decided) consumers is on the server. :func:`exhaustive` runs it over a whole profile
in float seconds, independently of the integer min-cut machinery; the blockwise method runs
it over the clusters of side nodes of a few nodes, in integer picoseconds
(:func:`lightning_split.planning.clusters.cluster_values`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from lightning_split.planning.costmodel import Plan, PlanningError, make_plan
from lightning_split.planning.cutgraph import CostGraph, resolve_pins
from lightning_split.planning.profile import Profile

__all__ = ["Choices", "cheapest_placement", "exhaustive"]

Cost = TypeVar("Cost", int, float)


@dataclass
class Choices:
    """The nodes to place, numbered ``0..count-1`` in graph order, and what each side costs them.

    The costs are read from arrays over the positions of a larger graph (``nodes[i]`` is node
    ``i``'s position), so callers need not copy them; the rest is per node ``i``. A plain
    (unfrozen) dataclass: it is built for every cluster of side nodes, where a frozen one's
    slower constructor shows.

    Attributes:
        nodes: the position of each node in the cost arrays.
        consumers: for each node, its consumers among these nodes (higher numbers).
        may_device: whether the node may go to the device (its inputs elsewhere permitting).
        may_server: whether the node may go to the server (its consumers all there permitting).
        crosses: whether its tensor crosses whenever it is on the device (a consumer elsewhere
            is on the server).
        device: by position, the cost on the device, before the transfer.
        transfer: by position, the tensor's transfer, added to ``device`` when it crosses.
        server: by position, the cost on the server.
        server_extra: by position, added to ``server`` (a separate term so that float sums keep
            their order), or ``None`` for nothing.
    """

    nodes: Sequence[int]
    consumers: Sequence[Sequence[int]]
    may_device: Sequence[bool]
    may_server: Sequence[bool]
    crosses: Sequence[bool]
    device: Sequence[Cost]
    transfer: Sequence[Cost]
    server: Sequence[Cost]
    server_extra: Sequence[Cost] | None = None


def cheapest_placement(
    choices: Choices,
    worst: Cost,
    finish: Callable[[Cost, int, list[bool]], Cost] | None = None,
    prune: bool = False,
) -> tuple[Cost, list[int] | None]:
    """The cheapest feasible placement of the nodes of ``choices``: (cost, device nodes ``i``), depth first.

    Each node is tried on the device, then on the server; the cost accumulates from the last
    node to the first. At each complete placement ``finish(cost, servers, in_server)`` returns
    its total (``servers`` counts the nodes on the server; without ``finish`` the total is the
    cost); the first strictly cheapest is kept. ``worst`` is the value to beat; with ``prune``
    a partial placement costing at least the best so far is abandoned (costs must be
    non-negative). The recursion is as deep as there are nodes. Returns ``(worst, None)`` when
    no placement beats ``worst``.
    """
    nodes, consumers, may_device, may_server, crosses = (
        choices.nodes, choices.consumers, choices.may_device, choices.may_server, choices.crosses,
    )  # fmt: skip
    device, transfer, server, server_extra = choices.device, choices.transfer, choices.server, choices.server_extra
    count = len(nodes)
    in_server = [False] * count
    best: list[Any] = [worst, None]

    def visit(i: int, cost: Cost, servers: int) -> None:
        if prune and cost >= best[0]:
            return
        if i < 0:
            total = cost if finish is None else finish(cost, servers, in_server)
            if total < best[0]:
                best[0], best[1] = total, [v for v in range(count) if not in_server[v]]
            return
        v = nodes[i]
        if may_device[i]:
            crossing = crosses[i] or any(in_server[w] for w in consumers[i])
            visit(i - 1, cost + device[v] + (transfer[v] if crossing else 0), servers)
        if may_server[i] and all(in_server[w] for w in consumers[i]):
            in_server[i] = True
            visit(i - 1, cost + server[v] + (0 if server_extra is None else server_extra[v]), servers + 1)
            in_server[i] = False

    visit(count - 1, 0, 0)
    return best[0], best[1]


def exhaustive(
    profile: Profile,
    pin_device: Iterable[str] = (),
    pin_server: Iterable[str] = (),
    max_nodes: int = 20,
    max_placements: int | None = None,
) -> Plan:
    """The optimum by brute force over every feasible placement (a test oracle for small graphs).

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
    costs = CostGraph(profile)
    on_device, on_server = resolve_pins(costs, pin_device, pin_server)
    nodes, outputs = profile.nodes, set(profile.outputs)
    per_byte = profile.link.seconds_per_byte_round_trip
    rtt = 2.0 * profile.link.rtt_s
    choices = Choices(
        nodes=range(len(nodes)),
        consumers=costs.consumers,
        may_device=[v not in on_server for v in range(len(nodes))],
        may_server=[node.kind != "input" and v not in on_device for v, node in enumerate(nodes)],
        crosses=[False] * len(nodes),
        device=[node.device_s for node in nodes],
        transfer=[node.out_bytes * per_byte for node in nodes],
        server=[node.server_s for node in nodes],
        server_extra=[node.out_bytes * per_byte if node.name in outputs else 0.0 for node in nodes],
    )
    visited = [0]

    def finish(cost: float, servers: int, _: list[bool]) -> float:
        visited[0] += 1
        if max_placements is not None and visited[0] > max_placements:
            raise PlanningError(f"exhaustive planning stopped after {max_placements} placements")
        return cost + (rtt if servers else 0.0)

    _, device = cheapest_placement(choices, math.inf, finish)
    if device is None:
        raise PlanningError("no feasible placement satisfies the pins")
    return make_plan(profile, "exhaustive", device, started, costs.graph)
