"""Constraints on a placement beyond feasibility: private inputs, a device memory budget, pins.

*Private inputs* (on by default). A node is *raw* when neither it nor any of its ancestors has
parameters (``param_bytes`` 0 for all of them): the model inputs and everything computed from
them alone (a reshape, a normalisation, a crop). By that definition a constant computed from
nothing without parameters (an ``arange``) is raw too, although it carries no input data; the
definition is kept as written, which errs on the side of privacy. A placement respects
private inputs iff no raw node has a consumer on the server, so the raw inputs never leave the
device in any form. Since the device set is closed under ancestors this is the same as pinning
every consumer of a raw node to the device. A profile without any ``param_bytes`` (the format
of 0.1) cannot be checked: :func:`can_check_private_inputs`.

*Device memory budget.* The device footprint of a placement is the sum of ``device_mem_bytes``
over its device nodes (0 where unknown); a budget bounds it.

:func:`resolve` turns pins and these constraints into the sets of positions that must be on
each side (the device set closed under ancestors, the server set under descendants) and
raises :class:`~lightning_split.planning.planner.PlanningError` naming the constraint when no
placement satisfies them all. Every feasible placement contains the device set, and that set
is itself feasible, so its footprint is the smallest one: the budget error reports it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from lightning_split.planning.costmodel import PlanningError
from lightning_split.planning.pipelined import StageCosts
from lightning_split.planning.profile import Profile

__all__ = [
    "Constraints",
    "can_check_private_inputs",
    "device_footprint",
    "fits_device_memory",
    "private_input_violations",
    "raw_nodes",
    "resolve",
    "respects_private_inputs",
]


def can_check_private_inputs(profile: Profile) -> bool:
    """Whether the profile says which nodes have parameters (some node has ``param_bytes``)."""
    return any(node.param_bytes is not None for node in profile.nodes)


def _raw_mask(profile: Profile) -> list[bool]:
    position = {node.name: i for i, node in enumerate(profile.nodes)}
    raw: list[bool] = []
    for node in profile.nodes:  # graph order: inputs first
        raw.append(not node.param_bytes and all(raw[position[u]] for u in node.inputs))
    return raw


def raw_nodes(profile: Profile) -> list[str]:
    """Names of the raw nodes (no parameters on the node or any ancestor), in profile order.

    A node whose ``param_bytes`` is unknown counts as having none, which errs on the side of
    privacy.
    """
    return [node.name for node, raw in zip(profile.nodes, _raw_mask(profile)) if raw]


def private_input_violations(profile: Profile, device: Iterable[str]) -> list[tuple[str, str]]:
    """``(raw node, its consumer on the server)`` for every raw tensor a placement would send."""
    on_device = set(device)
    raw = dict(zip(profile.names, _raw_mask(profile)))
    return [
        (source, node.name)
        for node in profile.nodes
        if node.name not in on_device
        for source in dict.fromkeys(node.inputs)
        if raw[source] and source in on_device
    ]


def respects_private_inputs(profile: Profile, device: Iterable[str]) -> bool:
    """Whether no raw node of a feasible placement has a consumer on the server."""
    return not private_input_violations(profile, device)


def device_footprint(profile: Profile, device: Iterable[str]) -> int:
    """The sum of ``device_mem_bytes`` over the device nodes (0 where unknown)."""
    on_device = set(device)
    return sum(node.device_mem_bytes or 0 for node in profile.nodes if node.name in on_device)


def fits_device_memory(profile: Profile, device: Iterable[str], budget: int | None) -> bool:
    """Whether the device footprint is at most ``budget`` bytes (``None``: no budget)."""
    return budget is None or device_footprint(profile, device) <= budget


@dataclass(frozen=True)
class Constraints:
    """Pins and constraints resolved to graph positions.

    Attributes:
        must_device: positions on the device in every feasible placement, closed under ancestors
            (inputs, device pins, consumers of raw nodes with private inputs, their ancestors).
        must_server: positions on the server in every feasible placement, closed under
            descendants (server pins and their descendants).
        budget: the device memory budget in bytes, or ``None``.
        private_inputs: whether private inputs are enforced.
    """

    must_device: frozenset[int]
    must_server: frozenset[int]
    budget: int | None
    private_inputs: bool


def _closure(start: dict[int, int], neighbours: list[list[int]] | list[tuple[int, ...]]) -> dict[int, int]:
    """Every position reachable from ``start``, mapped to the position it was first reached from."""
    reached = dict(start)
    queue = deque(start)
    while queue:
        v = queue.popleft()
        for u in neighbours[v]:
            if u not in reached:
                reached[u] = v
                queue.append(u)
    return reached


def _device_reason(costs: StageCosts, root: int, raw_source: dict[int, int], pinned: set[int]) -> str:
    """Why ``root`` must be on the device, as a predicate: ``"is pinned to the device"``, ..."""
    if costs.is_input[root]:
        return "is a model input (always on the device)"
    if root in pinned:
        return "is pinned to the device"
    return f"consumes the raw node {costs.names[raw_source[root]]}, which private inputs keep on the device"


def _conflicts(
    costs: StageCosts, device: dict[int, int], pin_server: set[int], raw_source: dict[int, int], pinned: set[int]
) -> list[str]:
    """One sentence per server pin that the device requirements (``device``: reached-from map) contradict."""
    problems = []
    for s in sorted(pin_server & set(device)):
        path = [s]
        while device[path[-1]] != path[-1]:
            path.append(device[path[-1]])
        reason = _device_reason(costs, path[-1], raw_source, pinned)
        if len(path) == 1:
            problems.append(f"{costs.names[s]} is pinned to the server but {reason}")
        else:
            via = " -> ".join(costs.names[v] for v in path)
            problems.append(
                f"{costs.names[s]} is pinned to the server but its descendant {costs.names[path[-1]]} {reason} ({via})"
            )
    return problems


def resolve(
    profile: Profile,
    costs: StageCosts,
    pin_device: Iterable[str] = (),
    pin_server: Iterable[str] = (),
    private_inputs: bool = True,
    device_memory: int | None = None,
) -> Constraints:
    """Resolve pins, private inputs and a memory budget; raise if no placement satisfies them.

    Raises:
        PlanningError: an unknown pinned name; private inputs on a profile without
            ``param_bytes``; conflicting pins or pins that break private inputs (the message
            names the nodes and the constraint); a budget below the smallest footprint (the
            message gives that footprint).
    """
    names_d = [pin_device] if isinstance(pin_device, str) else list(pin_device)
    names_s = [pin_server] if isinstance(pin_server, str) else list(pin_server)
    unknown = sorted(set(names_d + names_s).difference(costs.position))
    if unknown:
        raise PlanningError(f"pinned node(s) not in the profile: {', '.join(unknown)}")
    if private_inputs and not can_check_private_inputs(profile):
        raise PlanningError(
            "private inputs cannot be checked: no node of the profile has param_bytes; "
            "plan with private_inputs=False to lift the constraint"
        )
    pinned = {costs.position[name] for name in names_d}
    raw_source: dict[int, int] = {}
    if private_inputs:
        raw = _raw_mask(profile)
        for u in range(costs.n):
            if raw[u]:
                for w in costs.consumers[u]:
                    raw_source.setdefault(w, u)
    roots = {v for v in range(costs.n) if costs.is_input[v]} | pinned | set(raw_source)
    device = _closure({v: v for v in roots}, costs.inputs)
    server_pins = {costs.position[name] for name in names_s}
    problems = _conflicts(costs, device, server_pins, raw_source, pinned)
    if problems:
        kind = "constraints (pins and private inputs)" if any("private" in p for p in problems) else "pins"
        raise PlanningError(f"conflicting {kind}: " + "; ".join(problems))
    server = _closure({v: v for v in server_pins}, costs.consumers)
    if device_memory is not None:
        smallest = sum(costs.mem[v] for v in device)
        if smallest > device_memory:
            raise PlanningError(
                f"device memory budget of {device_memory} bytes is too small: the smallest device footprint "
                f"of a feasible placement is {smallest} bytes (the inputs, device pins and private-input "
                f"nodes and their ancestors, {len(device)} node(s))"
            )
    return Constraints(frozenset(device), frozenset(server), device_memory, private_inputs)


def privacy_line(profile: Profile, device: Iterable[str], private_inputs: bool) -> str:
    """One sentence for plan reports: whether any raw input crosses to the server, and why (not)."""
    if not can_check_private_inputs(profile):
        return "Private inputs: not checked (the profile has no param_bytes); raw inputs may cross"
    violations = private_input_violations(profile, device)
    if not violations:
        how = "private inputs enforced" if private_inputs else "private inputs off, but none would"
        return f"No raw input crosses to the server: every tensor sent is computed with device-side parameters ({how})"
    listed = ", ".join(f"{raw} (used by {consumer})" for raw, consumer in violations[:4])
    return f"Raw input crosses to the server: {listed}; private inputs are off"
