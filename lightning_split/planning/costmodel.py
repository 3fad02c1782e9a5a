"""The cost model ``T(D, S)`` of ``docs/cost-model.md``, in float, and the :class:`Plan` that reports it.

A placement puts every node of a :class:`~lightning_split.planning.profile.Profile` on the device
(``D``) or the server (``S``). Its predicted step time is the sum of five terms
(:class:`Breakdown`): the device nodes' compute, the server nodes' compute, the activations
crossing the cut up and their gradients down (each tensor once, however many server nodes
consume it, plus the server-side model outputs' round trip), and two round trips when any node
runs on the server. A placement is *feasible* when every input node is on the device and no
edge runs from the server back to the device (``D`` is closed under ancestors).

Everything here is a pure function of a profile and a placement, computed in float from the
profile: it is the reference the exact planners are checked against, and every
:class:`Plan`'s prediction is recomputed here whatever integer arithmetic found it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lightning_split.planning.profile import Profile

__all__ = [
    "Breakdown",
    "Plan",
    "PlanningError",
    "as_names",
    "device_mask",
    "graph_positions",
    "is_feasible",
    "make_plan",
    "step_time",
]

GraphPositions = tuple[dict[str, int], list[tuple[int, ...]]]
"""Each name's position in graph order, and each node's distinct input positions."""


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
        method: how it was found, one of :data:`lightning_split.planning.planner.METHODS`.
        device: names of the device nodes, in profile order.
        server: names of the server nodes, in profile order.
        cut: device nodes with at least one consumer on the server (their outputs cross), in
            profile order.
        predicted_step_s: ``T(D, S)`` of the placement, computed in float from the profile.
        breakdown: the terms of ``predicted_step_s``.
        solve_s: wall-clock seconds the planning call took.
        objective: what the placement minimises: ``"time"`` or ``"energy"`` (the device's).
    """

    method: str
    device: tuple[str, ...]
    server: tuple[str, ...]
    cut: tuple[str, ...]
    predicted_step_s: float
    breakdown: Breakdown
    solve_s: float
    objective: str = "time"

    def to_json(self, baselines: dict[str, float] | None = None) -> dict[str, Any]:
        """The ``plan --json`` object of ``docs/profile-format.md``.

        ``baselines`` (see :func:`lightning_split.planning.baselines.baselines`) fills the
        ``"baselines"`` key; without it the key is left out, since a plan alone does not know
        the costs of the other placements.
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


def as_names(names: Iterable[str]) -> list[str]:
    """The names as a list; a bare string is one name, not a sequence of one-letter names."""
    return [names] if isinstance(names, str) else list(names)


def graph_positions(profile: Profile) -> GraphPositions:
    """Position of each name in graph order, and each node's distinct input positions."""
    position = {node.name: i for i, node in enumerate(profile.nodes)}
    inputs = [
        (position[node.inputs[0]],) if len(node.inputs) == 1 else tuple(dict.fromkeys(position[n] for n in node.inputs))
        for node in profile.nodes
    ]
    return position, inputs


def device_mask(profile: Profile, device: Iterable[str]) -> list[bool]:
    """For each node in profile order, whether it is named in ``device``.

    Raises:
        PlanningError: a name is not a node of the profile.
    """
    wanted = set(as_names(device))
    unknown = wanted.difference(profile.names)
    if unknown:
        raise PlanningError(f"unknown node(s): {', '.join(sorted(unknown))}")
    return [node.name in wanted for node in profile.nodes]


def breakdown(profile: Profile, on_device: list[bool], graph: GraphPositions) -> Breakdown:
    """The terms of ``T`` for the placement ``on_device`` (a flag per node in profile order)."""
    position, inputs = graph
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
    return breakdown(profile, device_mask(profile, device), graph_positions(profile))


def is_feasible(profile: Profile, device: Iterable[str]) -> bool:
    """Whether a placement can run: every input node on the device and no edge server -> device.

    Raises:
        PlanningError: a name is not a node of the profile.
    """
    on_device = device_mask(profile, device)
    _, inputs = graph_positions(profile)
    for i, node in enumerate(profile.nodes):
        if node.kind == "input" and not on_device[i]:
            return False
        if on_device[i] and not all(on_device[u] for u in inputs[i]):
            return False
    return True


def make_plan(
    profile: Profile, method: str, device: Iterable[int], started: float, graph: GraphPositions | None = None
) -> Plan:
    """The :class:`Plan` of the placement whose device nodes are at positions ``device``.

    ``started`` is the :func:`time.perf_counter` reading when planning began (``solve_s`` runs
    until now); ``graph`` saves recomputing :func:`graph_positions` when the caller has it.
    """
    graph = graph or graph_positions(profile)
    _, inputs = graph
    nodes = profile.nodes
    on_device = [False] * len(nodes)
    for i in device:
        on_device[i] = True
    crossing = [False] * len(nodes)
    for i, sources in enumerate(inputs):
        if not on_device[i]:
            for u in sources:
                crossing[u] = True
    terms = breakdown(profile, on_device, graph)
    return Plan(
        method=method,
        device=tuple(node.name for node, here in zip(nodes, on_device) if here),
        server=tuple(node.name for node, here in zip(nodes, on_device) if not here),
        cut=tuple(node.name for node, here, sent in zip(nodes, on_device, crossing) if here and sent),
        predicted_step_s=terms.total,
        breakdown=terms,
        solve_s=time.perf_counter() - started,
    )
