"""The pipelined planner: a feasible placement of minimum ``T_M`` under the constraints.

:func:`plan_pipelined` minimises ``T_M`` (:mod:`~lightning_split.planning.pipelined`: ``M``
micro-batches, a codec) over the placements that are feasible (inputs on the device, no edge
from the server back to the device), satisfy the pins, keep the raw inputs on the device
(private inputs, on by default) and fit a device memory budget
(:mod:`~lightning_split.planning.constraints`).

Method, and what *exact* means. The placements are enumerated case by case between the
graph's boundaries (:mod:`~lightning_split.planning.enumeration`); when every feasible
placement is covered within ``max_placements`` evaluations, the result is the optimum
(``exact``, ``gap`` 0). Past the cap, the best placement found so far is kept and the search
switches to min cuts of weighted linearisations of ``T_M`` (:mod:`~lightning_split.planning
.lagrangian`), which give more candidates and a certified ``lower_bound``: no feasible
placement is faster. ``gap`` is the difference; ``exact`` is true when it closes (within a
nanosecond per second of step time). With ``M = 1`` and no budget the objective is linear and a
single min cut is the optimum, so the enumeration only gets a small cap (it is faster on chains
of blocks) before the cut.

:func:`sequential_optimum` is the minimum of ``T_1`` under the same codec and constraints (the
``sequential_optimum`` baseline), :func:`best_micro_batches` the best ``M`` of a range.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lightning_split.planning.constraints import Constraints, resolve
from lightning_split.planning.costmodel import PlanningError
from lightning_split.planning.enumeration import search_placements
from lightning_split.planning.lagrangian import certified_bound, closes
from lightning_split.planning.pipelined import Objective, PipelinedTime, StageCosts
from lightning_split.planning.profile import Profile

__all__ = ["PipelinedPlan", "best_micro_batches", "plan_pipelined", "sequential_optimum"]

DEFAULT_MAX_PLACEMENTS = 200_000
_LINEAR_CAP = 10_000  # with a linear objective the enumeration only saves the min cut's time on block chains


@dataclass(frozen=True)
class PipelinedPlan:
    """A placement of minimum ``T_M`` (or the best found, with a bound on how far it can be off).

    Attributes:
        device, server: node names on each side, in profile order.
        cut: device nodes with a consumer on the server (their outputs cross), in profile order.
        micro_batches: ``M``.
        codec: the codec the transfers were scaled for.
        predicted_step_s: ``T_M`` of the placement.
        terms: its terms per phase and stage.
        exact: whether the placement is certified optimal.
        lower_bound: no feasible placement has a smaller ``T_M`` (``predicted_step_s`` when exact).
        gap: ``predicted_step_s - lower_bound``, seconds.
        evaluated: placements whose ``T_M`` was computed by the enumeration.
        device_footprint: the sum of ``device_mem_bytes`` over the device nodes.
        private_inputs: whether the raw inputs were kept on the device.
        device_memory: the budget planned for, bytes, or ``None``.
        solve_s: wall-clock seconds of the planning call.
    """

    device: tuple[str, ...]
    server: tuple[str, ...]
    cut: tuple[str, ...]
    micro_batches: int
    codec: str
    predicted_step_s: float
    terms: PipelinedTime
    exact: bool
    lower_bound: float
    gap: float
    evaluated: int
    device_footprint: int
    private_inputs: bool
    device_memory: int | None
    solve_s: float

    def to_json(self) -> dict[str, Any]:
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data.update(device=list(self.device), server=list(self.server), cut=list(self.cut))
        data["terms"] = self.terms.to_json()
        return data


def _check_limits(device_memory: int | None, max_placements: int) -> None:
    if device_memory is not None and (isinstance(device_memory, bool) or not isinstance(device_memory, int)):
        raise PlanningError(f"device_memory must be a number of bytes (an integer), got {device_memory!r}")
    if device_memory is not None and device_memory < 0:
        raise PlanningError(f"device_memory must be >= 0 bytes, got {device_memory}")
    if max_placements < 1:
        raise PlanningError(f"max_placements must be at least 1, got {max_placements}")


def plan_pipelined(
    profile: Profile,
    micro_batches: int = 1,
    codec: str = "none",
    *,
    private_inputs: bool = True,
    device_memory: int | None = None,
    pin_device: Iterable[str] = (),
    pin_server: Iterable[str] = (),
    max_placements: int = DEFAULT_MAX_PLACEMENTS,
) -> PipelinedPlan:
    """Plan a placement of minimum ``T_M`` (see the module docstring for the method).

    Parameters:
        profile: the cost graph and link.
        micro_batches: ``M``, an integer >= 1.
        codec: ``"none"``, ``"fp16"``, ``"bf16"`` or ``"int8"``.
        private_inputs: keep every raw node's consumers on the device (the profile must have
            ``param_bytes``; pass ``False`` to plan without the constraint).
        device_memory: the device memory budget in bytes, or ``None``.
        pin_device, pin_server: names of nodes forced onto one side.
        max_placements: the most placements the enumeration evaluates before it falls back
            to the certified bound.

    Raises:
        PlanningError: an unknown codec or pinned name, ``micro_batches`` < 1, or no placement
            satisfies the constraints (the message names the constraint; for the budget, the
            smallest footprint that would fit).
    """
    started = time.perf_counter()
    _check_limits(device_memory, max_placements)
    costs = StageCosts(profile, micro_batches)
    objective = Objective(costs, micro_batches, codec)
    constraints = resolve(profile, costs, pin_device, pin_server, private_inputs, device_memory)
    linear = objective.micro_batches == 1 and device_memory is None  # then one min cut is exact
    search = search_placements(
        costs, constraints, objective, min(max_placements, _LINEAR_CAP) if linear else max_placements
    )
    if search.complete:
        return _make_plan(costs, constraints, objective, search.device, search.value, search.evaluated, started)
    bound = certified_bound(costs, constraints, objective, (search.value, search.device))
    assert bound.device is not None  # the smallest device set is always a candidate
    return _make_plan(costs, constraints, objective, bound.device, bound.lower_bound, search.evaluated, started)


def _make_plan(
    costs: StageCosts,
    constraints: Constraints,
    objective: Objective,
    device: Iterable[int],
    lower_bound: float,
    evaluated: int,
    started: float,
) -> PipelinedPlan:
    on_device = [False] * costs.n
    for v in device:
        on_device[v] = True
    terms = costs.time(on_device, objective)
    predicted = terms.total
    exact = closes(predicted, lower_bound)
    lower_bound = predicted if exact else lower_bound
    return PipelinedPlan(
        device=tuple(name for name, here in zip(costs.names, on_device) if here),
        server=tuple(name for name, here in zip(costs.names, on_device) if not here),
        cut=tuple(costs.names[u] for u in costs.crossing(on_device)),
        micro_batches=objective.micro_batches,
        codec=objective.codec,
        predicted_step_s=predicted,
        terms=terms,
        exact=exact,
        lower_bound=lower_bound,
        gap=predicted - lower_bound,
        evaluated=evaluated,
        device_footprint=sum(costs.mem[v] for v in range(costs.n) if on_device[v]),
        private_inputs=constraints.private_inputs,
        device_memory=constraints.budget,
        solve_s=time.perf_counter() - started,
    )


def sequential_optimum(
    profile: Profile,
    codec: str = "none",
    **constraints: Any,
) -> PipelinedPlan:
    """The placement of minimum ``T_1`` (no pipelining) under the same codec and constraints.

    ``constraints`` are the keyword arguments of :func:`plan_pipelined` (``private_inputs``,
    ``device_memory``, ``pin_device``, ``pin_server``, ``max_placements``). Its
    ``predicted_step_s`` is the ``sequential_optimum`` baseline.
    """
    return plan_pipelined(profile, 1, codec, **constraints)


def best_micro_batches(
    profile: Profile,
    codec: str = "none",
    candidates: Iterable[int] = range(1, 17),
    **constraints: Any,
) -> PipelinedPlan:
    """The plan of the number of micro-batches, among ``candidates``, of minimum ``T_M``.

    Ties go to the smaller ``M`` (fewer messages, smaller kernels). The returned plan's
    ``lower_bound`` and ``exact`` cover the choice of ``M`` too: the bound is the smallest
    over the candidates, and the plan is exact only if every candidate was solved exactly.

    Raises:
        PlanningError: no candidates, or as :func:`plan_pipelined`.
    """
    started = time.perf_counter()
    plans = [plan_pipelined(profile, m, codec, **constraints) for m in dict.fromkeys(candidates)]
    if not plans:
        raise PlanningError("best_micro_batches needs at least one candidate number of micro-batches")
    best = min(plans, key=lambda plan: (plan.predicted_step_s, plan.micro_batches))
    lower_bound = min(plan.lower_bound for plan in plans)
    return dataclasses.replace(
        best,
        exact=all(plan.exact for plan in plans),
        lower_bound=lower_bound,
        gap=best.predicted_step_s - lower_bound,
        evaluated=sum(plan.evaluated for plan in plans),
        solve_s=time.perf_counter() - started,
    )
