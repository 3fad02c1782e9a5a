"""One planning request with every option of ``lightning-split plan``: micro-batches, codec, constraints.

:func:`plan_with_options` is what the CLI calls. The plain case (one micro-batch, no codec, no
memory budget) stays the exact min cut of :func:`~lightning_split.planning.planner.plan` with
the chosen ``method``; private inputs are then extra device pins (every consumer of a raw node
stays on the device, and with it, the raw node). Anything else goes to the pipelined planner
(:func:`~lightning_split.planning.pipelined_planner.plan_pipelined`). Either way the result is
a :class:`~lightning_split.planning.costmodel.Plan` whose ``predicted_step_s`` is ``T_M`` of
its placement, the baselines on the same objective (``sequential_optimum`` among them), and
the extra ``plan --json`` fields.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lightning_split.planning.baselines import best_layerwise, device_only, server_only
from lightning_split.planning.constraints import can_check_private_inputs, raw_nodes
from lightning_split.planning.costmodel import Plan, PlanningError, graph_positions, make_plan
from lightning_split.planning.energy import EnergyModel
from lightning_split.planning.pipelined import pipelined_step_time
from lightning_split.planning.pipelined_planner import best_micro_batches, plan_pipelined, sequential_optimum
from lightning_split.planning.planner import plan
from lightning_split.planning.profile import Profile

__all__ = ["PlanOutcome", "plan_with_options", "private_input_pins"]


@dataclass(frozen=True)
class PlanOutcome:
    """A plan, its baselines on the same objective, the extra JSON fields and warnings for stderr."""

    plan: Plan
    baselines: dict[str, float]
    extra: dict[str, Any]
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``plan --json`` object: ``Plan.to_json`` plus ``micro_batches``, ``codec`` and the bound."""
        return {**self.plan.to_json(self.baselines), **self.extra}


def private_input_pins(profile: Profile) -> set[str]:
    """Device pins that keep every raw node's tensor off the wire: the raw nodes' consumers and the raw nodes they read.

    A raw node that nothing consumes (a dead-end constant) sends nothing and may run on the server.
    """
    raw = set(raw_nodes(profile))
    pins: set[str] = set()
    for node in profile.nodes:
        fed = raw.intersection(node.inputs)
        if fed:
            pins |= fed | {node.name}
    return pins


def plan_with_options(
    profile: Profile,
    method: str = "blockwise",
    micro_batches: int | str = 1,
    codec: str = "none",
    private_inputs: bool = True,
    device_memory: int | None = None,
    pin_device: Iterable[str] = (),
    pin_server: Iterable[str] = (),
    objective: str = "time",
    energy: EnergyModel | None = None,
) -> PlanOutcome:
    """Plan ``profile`` for ``micro_batches`` (an int or ``"auto"``), ``codec`` and the constraints.

    Private inputs on a profile without ``param_bytes`` cannot be checked: the plan is made
    without them and a warning says so. ``objective="energy"`` (the device's joules per step,
    with ``energy`` as in :func:`~lightning_split.planning.planner.plan`) is planned for one
    micro-batch without a codec or memory budget. Raises ``PlanningError`` when nothing is
    feasible, or for the energy objective with the pipelined options.
    """
    started = time.perf_counter()
    warnings: list[str] = []
    if private_inputs and not can_check_private_inputs(profile):
        warnings.append(
            "warning: the profile has no param_bytes, so private inputs are not enforced "
            "(raw inputs may cross to the server); re-profile, or pass --no-private-inputs to silence this"
        )
        private_inputs = False
    constraints = dict(private_inputs=private_inputs, device_memory=device_memory)
    pins = dict(pin_device=tuple(pin_device), pin_server=tuple(pin_server))
    if micro_batches == 1 and codec == "none" and device_memory is None:
        device_pins = set(pins["pin_device"]) | (private_input_pins(profile) if private_inputs else set())
        pinned = dict(pin_device=sorted(device_pins), pin_server=pins["pin_server"])
        result = plan(profile, method, **pinned, objective=objective, energy=energy)
        if objective == "time":
            result = _cheaper_alone(profile, method, result, pinned)
        extra = {"micro_batches": 1, "codec": codec, "exact": True, "private_inputs": private_inputs}
        against = _baselines(profile, 1, codec)
        fastest = result if objective == "time" else plan(profile, method, **pinned)
        against["sequential_optimum"] = fastest.predicted_step_s
        return PlanOutcome(result, against, extra, tuple(warnings))
    if objective != "time":
        raise PlanningError(
            f"objective={objective!r} plans one micro-batch without a codec or device memory budget; "
            "drop --micro-batches/--codec/--device-memory, or plan for time"
        )
    if micro_batches == "auto":
        chosen = best_micro_batches(profile, codec, **constraints, **pins)
    else:
        chosen = plan_pipelined(profile, int(micro_batches), codec, **constraints, **pins)
    positions = graph_positions(profile)
    index = {name: i for i, name in enumerate(profile.names)}
    placed = make_plan(profile, method, [index[name] for name in chosen.device], started, positions)
    result = dataclasses.replace(
        placed, predicted_step_s=chosen.predicted_step_s, solve_s=time.perf_counter() - started
    )
    against = _baselines(profile, chosen.micro_batches, codec)
    against["sequential_optimum"] = sequential_optimum(profile, codec, **constraints, **pins).predicted_step_s
    extra = {
        "micro_batches": chosen.micro_batches,
        "codec": codec,
        "exact": chosen.exact,
        "lower_bound": chosen.lower_bound,
        "private_inputs": private_inputs,
        "device_footprint_bytes": chosen.device_footprint,
        "pipelined": chosen.terms.to_json(),
    }
    return PlanOutcome(result, against, extra, tuple(warnings))


def _cheaper_alone(profile: Profile, method: str, result: Plan, pinned: dict[str, Any]) -> Plan:
    """``result``, or the device-only placement where the per-message cost makes it faster.

    The min cut charges no ``message_s``: it is a constant (two messages) of every placement
    that uses the server, so it cannot change which of those is best, only whether using the
    server pays at all, which this compares in the full step time ``T_1``.
    """
    if not result.server or pinned["pin_server"] or profile.link.per_message_s <= 0:
        return result
    alone = make_plan(profile, method, range(len(profile.nodes)), time.perf_counter())
    step = lambda placed: pipelined_step_time(profile, placed.device, 1, "none").total  # noqa: E731
    return alone if step(alone) < step(result) else result


def _baselines(profile: Profile, micro_batches: int, codec: str) -> dict[str, float]:
    """``T_M`` of the three section-1 baselines' placements."""
    return {
        name: pipelined_step_time(profile, baseline(profile).device, micro_batches, codec).total
        for name, baseline in (
            ("device_only", device_only),
            ("server_only", server_only),
            ("best_layerwise", best_layerwise),
        )
    }
