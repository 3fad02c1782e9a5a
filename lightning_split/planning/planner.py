"""Optimal device/server placement: the minimum s-t cut of a profile's cost graph.

The planner minimises ``T(D, S)`` of ``docs/cost-model.md`` (:mod:`~lightning_split.planning.costmodel`)
over feasible placements: every ``"input"`` node on the device, no edge from the server back to
the device, and the user's pins respected (:func:`~lightning_split.planning.cutgraph.resolve_pins`).
Two exact methods solve it, and a few baselines give something to compare to. :func:`plan` is
the entry point; each method lives in its own module:

``"full"``
    One minimum s-t cut of the whole graph (:func:`~lightning_split.planning.ranges.full`). The
    cut graph (:mod:`~lightning_split.planning.cutgraph`) has a vertex per node, the source on
    the device side and the sink on the server side: ``s -> v`` costs the server time, ``v ->
    t`` the device time, an infinite edge against each data edge makes finite cuts exactly the
    feasible placements, and an auxiliary vertex per tensor charges its transfer once, when it
    crosses. The rtt term is added afterwards, and all-device compared. Capacities are integer
    picoseconds, since networkx's flow algorithms are not exact in float
    (:mod:`~lightning_split.planning.mincut`); :attr:`Plan.predicted_step_s` is recomputed in
    float from the profile.

``"blockwise"`` (the default)
    The same optimum, found by series decomposition (:mod:`~lightning_split.planning.blockwise`).
    The *boundaries* (:mod:`~lightning_split.planning.boundaries`: nodes comparable with every
    other node that no edge skips; on a ResNet, the block outputs) split every feasible placement
    into cases, one per boundary pair, each the min cut of the small range between the two
    (:mod:`~lightning_split.planning.ranges`) plus prefix and suffix sums; the cheapest case is the
    optimum, exactly. Side nodes that reach no output or that no input reaches (ViT's ``_assert``
    chains, Swin's constant biases) are grouped into clusters placed on their own
    (:mod:`~lightning_split.planning.clusters`), so that they do not hide the boundaries.

Objectives: ``objective="time"`` (the default) minimises ``T``; ``objective="energy"`` the device's
energy per step (:mod:`~lightning_split.planning.energy`). Energy is linear in the placement like
time, so the energy objective is the same min cut of a profile rewritten into joules
(:func:`~lightning_split.planning.energy.energy_profile`), with every method and pin.

Baselines: ``"device_only"``, ``"server_only"`` and ``"best_layerwise"`` (the best feasible prefix
of the profile order), as defined in ``docs/cost-model.md`` (:mod:`~lightning_split.planning.baselines`).
``"exhaustive"`` enumerates every feasible placement (:mod:`~lightning_split.planning.exhaustive`);
it is a test oracle for small graphs.

Every name of ``__all__`` is importable from here, wherever it is defined.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

from lightning_split.planning.baselines import baselines, best_layerwise, device_only, server_only
from lightning_split.planning.blockwise import blockwise
from lightning_split.planning.boundaries import boundaries, series_boundaries
from lightning_split.planning.costmodel import (
    Breakdown,
    Plan,
    PlanningError,
    as_names,
    is_feasible,
    make_plan,
    step_time,
)
from lightning_split.planning.cutgraph import CostGraph, resolve_pins
from lightning_split.planning.energy import OBJECTIVES, EnergyModel, energy_model_for, energy_profile
from lightning_split.planning.exhaustive import exhaustive
from lightning_split.planning.profile import Profile
from lightning_split.planning.ranges import full

__all__ = [
    "METHODS",
    "OBJECTIVES",
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
_BASELINES = {"device_only": device_only, "server_only": server_only, "best_layerwise": best_layerwise}


def plan(
    profile: Profile,
    method: str = "blockwise",
    pin_device: Iterable[str] = (),
    pin_server: Iterable[str] = (),
    objective: str = "time",
    energy: EnergyModel | None = None,
) -> Plan:
    """Plan a placement of minimum predicted step time (or device energy per step).

    Parameters:
        profile: the cost graph and link.
        method: ``"blockwise"`` (exact, fast: series decomposition at boundaries), ``"full"``
            (exact: one min cut of the whole graph), ``"exhaustive"`` (exact, brute force, small
            graphs only) or a baseline: ``"device_only"``, ``"server_only"``, ``"best_layerwise"``.
        pin_device: names of nodes that must run on the device (exact methods only).
        pin_server: names of nodes that must run on the server (exact methods only).
        objective: ``"time"`` (minimise ``T``) or ``"energy"`` (minimise the device's joules
            per step, :func:`~lightning_split.planning.energy.step_energy`).
        energy: the device's power and radio for ``"energy"`` (default: the profile's device
            preset, :func:`~lightning_split.planning.energy.energy_model_for`).

    Returns:
        A :class:`Plan`. Both exact methods reach the same optimal ``T`` (up to the picosecond
        rounding of the costs); when several placements tie, either may be returned. Its
        ``predicted_step_s`` and ``breakdown`` are always the placement's step time; its
        ``objective`` says what was minimised.

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
    if objective not in OBJECTIVES:
        raise PlanningError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    if objective == "energy":
        joules = energy_profile(profile, energy or energy_model_for(profile))
        chosen = plan(joules, method, pin_device, pin_server)
        position = {name: i for i, name in enumerate(profile.names)}
        timed = make_plan(profile, chosen.method, [position[name] for name in chosen.device], started)
        return dataclasses.replace(timed, objective="energy")
    if method == "exhaustive":
        return exhaustive(profile, pin_device, pin_server)
    if method in _BASELINES:
        if as_names(pin_device) or as_names(pin_server):
            raise PlanningError(f"pins apply to the blockwise, full and exhaustive methods, not to {method}")
        return _BASELINES[method](profile)
    if method not in ("blockwise", "full"):
        raise PlanningError(f"unknown planning method {method!r}; expected one of {', '.join(METHODS)}")
    costs = CostGraph(profile)
    on_device, on_server = resolve_pins(costs, pin_device, pin_server)
    if costs.n == 0:
        device: list[int] = []
    elif method == "full":
        device = full(costs, on_device, on_server)
    else:
        device = blockwise(costs, on_device, on_server)
    return make_plan(profile, method, device, started, costs.graph)
