"""From a module and a batch to a placement: trace, cost, plan, check.

:func:`place_model` is what ``SplitStrategy`` calls on the first forward. It traces the
module on the real batch (:func:`trace_batch`), builds a cost profile (node costs from a
*cost source* plus a link), solves for the optimal cut (or takes the user's), and keeps
tensors shared by both sides (tied weights) on one side by re-planning with pins. The
result, :class:`Placement`, renders itself for logs (:meth:`Placement.describe`) and
loggers (:meth:`Placement.summary`), and re-plans itself for another link with the same
trace and node costs (:meth:`Placement.replanned`), which is what live re-planning needs.

The cost sources that price a trace (estimated, given or measured costs) are in
:mod:`lightning_split.costs.sources`; :class:`~lightning_split.costs.sources.EstimatedCosts`
is the default.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from lightning_split.costs.sources import EstimatedCosts, ProfileBuilder
from lightning_split.graph import metadata
from lightning_split.graph.capture import TracedModel, trace_module
from lightning_split.graph.describe import example_of
from lightning_split.graph.programs import SplitError, SplitSpec, device_spec_from_cut, make_spec, shared_across
from lightning_split.planning import planner
from lightning_split.planning.energy import EnergyModel, energy_model_for, step_energy
from lightning_split.planning.profile import DEFAULT_LINK, Link, Profile
from lightning_split.planning.resources import estimated_by, resources
from lightning_split.planning.units import format_bytes
from lightning_split.runtime.metrics import link_metrics

LinkSource = Callable[[TracedModel], Link]


@dataclass
class TracedBatch:
    """A trace of the module on one real batch, plus that batch's shapes (never its data).

    Attributes:
        traced: the trace.
        example: ``{"args": ..., "kwargs": ...}`` with every tensor replaced by its dtype and
            shape, so the server can trace its own copy of the model the same way.
    """

    traced: TracedModel
    example: dict[str, Any]


def trace_batch(
    module: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any], leaf_modules: Sequence[str | type] = ()
) -> TracedBatch:
    """Trace ``module`` on one call (``args``, ``kwargs``) and keep the call's shapes."""
    traced = trace_module(module, tuple(args), dict(kwargs), leaf_modules)
    return TracedBatch(traced, example_of(args, kwargs))


@dataclass
class Placement:
    """A traced model and where each of its nodes runs.

    Attributes:
        traced: the trace (graph, per-node bytes and FLOPs).
        spec: the placement the programs are built from.
        source: how the placement was chosen (``"auto"`` or ``"cut=..."``).
        profile: the cost profile planned on (``None`` for a user cut without costs).
        plan: the planner's result (``None`` for a user cut).
        baselines: predicted step time of the baselines on the same profile.
        pins: extra pins added to keep tied tensors on one side.
        example: the batch's shapes (see :class:`TracedBatch`).
        method: the planner method (``"blockwise"`` or ``"full"``).
        pin_device, pin_server: the user's pins (kept so that a re-plan honours them).
        notes: how the costs and the link were obtained (for the log), e.g.
            ``{"costs": "measured", "profile_s": 1.2, "cache": "hit", "link": "measured"}``.
        objective: what the plan minimises, ``"time"`` or ``"energy"`` (a re-plan keeps it).
        energy: the device's power and radio for the energy (``None``: the profile's device preset).
    """

    traced: TracedModel
    spec: SplitSpec
    source: str
    profile: Profile | None = None
    plan: planner.Plan | None = None
    baselines: dict[str, float] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)
    example: dict[str, Any] = field(default_factory=dict)
    method: str = "blockwise"
    pin_device: tuple[str, ...] = ()
    pin_server: tuple[str, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)
    objective: str = "time"
    energy: EnergyModel | None = None

    @property
    def graph_module(self) -> fx.GraphModule:
        return self.traced.graph_module

    @property
    def link(self) -> Link | None:
        """The link the plan was made for (``None`` for a user cut)."""
        return self.profile.link if self.profile is not None else None

    def replanned(self, link: Link) -> Placement:
        """The optimal plan for ``link`` with the same trace, node costs and pins.

        Raises:
            SplitError: the plan is a user cut (it has no costs to plan with).
        """
        if self.profile is None:
            raise SplitError(f"a plan from {self.source} has no cost profile and cannot be re-planned; use cut='auto'")
        profile = self.profile.with_link(link)
        best, pins = _plan_keeping_tied_tensors(
            self.graph_module, profile, self.method, set(self.pin_device), set(self.pin_server), self._goal
        )
        return dataclasses.replace(
            self,
            spec=make_spec(self.graph_module, best.server),
            profile=profile,
            plan=best,
            baselines=planner.baselines(profile),
            pins=pins,
        )

    @property
    def _goal(self) -> _Objective:
        return _Objective(self.objective, self.energy)

    def cut_rows(self) -> list[tuple[str, str, int]]:
        """(node, shape, bytes) of each tensor that crosses to the server."""
        rows = []
        for name in self.spec.cut:
            info = self.traced.node(name)
            rows.append((name, metadata.text(info.out_meta), info.out_bytes))
        return rows

    def predicted_step_s(self) -> float | None:
        if self.profile is None:
            return None
        device = [n.name for n in self.profile.nodes if n.name not in set(self.spec.server_nodes)]
        return planner.step_time(self.profile, device).total

    def describe(self) -> str:
        """A readable multi-line account of the plan."""
        n_total = len(self.traced.nodes)
        n_server = len(self.spec.server_nodes)
        lines = [f"placement ({self.source}): {n_total - n_server} nodes on the device, {n_server} on the server"]
        if not n_server:
            lines.append("  everything runs on the device (the server is not used)")
        for name, shape, size in self.cut_rows():
            lines.append(f"  cut tensor {name:<28} {shape:<22} {format_bytes(size):>10}")
        predicted = self.predicted_step_s()
        if predicted is not None and self.profile is not None:
            how = self.notes.get("link", "given")
            lines.append(f"  link ({how}): {self.profile.link.describe()}")
            lines.append(f"  predicted step: {predicted * 1e3:.2f} ms ({_profile_kind(self.profile)})")
            for name, value in self.baselines.items():
                lines.append(f"    vs {name:<15} {value * 1e3:10.2f} ms")
            lines.append("  " + self._resources_text(self.profile))
        if self.pins:
            lines.append(
                "  pinned to keep tied tensors on one side: " + ", ".join(f"{k}->{v}" for k, v in self.pins.items())
            )
        if self.traced.method != "fx":
            lines.append(f"  captured with torch.{self.traced.method} (fx cannot trace the whole model)")
        if self.traced.auto_leaves:
            lines.append("  untraceable submodules run whole: " + ", ".join(self.traced.auto_leaves))
        notes = {k: v for k, v in self.notes.items() if k != "link"}
        if notes:
            lines.append("  costs: " + ", ".join(f"{k}={_note(v)}" for k, v in notes.items()))
        return "\n".join(lines)

    def _resources_text(self, profile: Profile) -> str:
        device = [n.name for n in profile.nodes if n.name not in set(self.spec.server_nodes)]
        found = resources(profile, device, self.energy)
        goal = f", minimising {self.objective}" if self.objective != "time" else ""
        return (
            f"device memory {format_bytes(found.memory.total)}, device energy {found.energy.total_j:.3f} J "
            f"per step ({found.model.describe()}{goal})"
        )

    def summary(self) -> dict[str, Any]:
        """Flat values for ``logger.log_hyperparams``."""
        data: dict[str, Any] = {
            "split/source": self.source,
            "split/cut": ",".join(self.spec.cut) or "(none)",
            "split/server_nodes": len(self.spec.server_nodes),
            "split/cut_bytes": sum(size for _, _, size in self.cut_rows()),
            "split/capture": self.traced.method,
        }
        predicted = self.predicted_step_s()
        if predicted is not None:
            data["split/predicted_step_s"] = predicted
        for name, value in self.baselines.items():
            data[f"split/baseline_{name}_s"] = value
        if self.profile is not None:
            data.update(link_metrics(self.profile.link))
        for key, value in self.notes.items():
            if isinstance(value, str | int | float | bool):
                data[f"split/{key}"] = value
        return data


def place_model(
    module: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    cut: str | Sequence[str] = "auto",
    leaf_modules: Sequence[str | type] = (),
    pin_device: Sequence[str] = (),
    pin_server: Sequence[str] = (),
    link: Link | str | LinkSource | None = None,
    profile_builder: ProfileBuilder | None = None,
    method: str = "blockwise",
    traced: TracedBatch | None = None,
    notes: Mapping[str, Any] | None = None,
    objective: str = "time",
    energy: EnergyModel | None = None,
) -> Placement:
    """Trace ``module`` on a batch and choose where each node runs.

    Args:
        module: the model.
        args, kwargs: one real call of ``module.forward``.
        cut: ``"auto"`` to plan, or node names / module paths whose nodes (and ancestors)
            run on the device.
        leaf_modules: module paths or classes to trace as single nodes.
        pin_device, pin_server: nodes the planner must keep on one side.
        link: the link to plan for: a ``Link``, text like ``"10mbit,20ms"``, a function of
            the trace that returns one (e.g. a measurement sized by the cut tensors), or
            ``None`` for :data:`DEFAULT_LINK`.
        profile_builder: makes the cost profile from the trace and the link (default:
            :class:`EstimatedCosts`); its ``notes`` attribute, if it has one, joins the plan's.
        method: planner method.
        traced: a trace of this call made earlier (it is not traced again).
        notes: how costs and link were obtained, for the log (see :attr:`Placement.notes`).
        objective: ``"time"`` or ``"energy"`` (the device's joules per step).
        energy: the device's power and radio for ``"energy"`` (default: the profile's device preset).
    """
    batch = traced if traced is not None else trace_batch(module, args, kwargs, leaf_modules)
    gm = batch.traced.graph_module
    if cut != "auto":
        names = [cut] if isinstance(cut, str) else list(cut)
        spec = device_spec_from_cut(gm, names)
        shared = shared_across(gm, spec)
        if shared:
            key, (device_users, server_users) = next(iter(shared.items()))
            raise SplitError(
                f"cut {names} splits the tied tensor {key!r}: device nodes {device_users} and server nodes "
                f"{server_users} both use it. Cut after its last use, or use cut='auto' "
                "(it keeps tied tensors on one side)"
            )
        return Placement(batch.traced, spec, f"cut={','.join(names)}", example=batch.example)

    if isinstance(link, str):
        link = Link.parse(link)
    elif callable(link):
        link = link(batch.traced)
    link = link or DEFAULT_LINK
    builder = profile_builder or EstimatedCosts()
    profile = builder(batch.traced, link)
    notes = {**getattr(builder, "notes", {}), **dict(notes or {})}
    goal = _Objective(objective, energy)
    best, pins = _plan_keeping_tied_tensors(gm, profile, method, set(pin_device), set(pin_server), goal)
    return Placement(
        batch.traced,
        make_spec(gm, best.server),
        "auto",
        profile,
        best,
        planner.baselines(profile),
        pins,
        batch.example,
        method,
        tuple(pin_device),
        tuple(pin_server),
        notes,
        objective,
        energy,
    )


@dataclass(frozen=True)
class _Objective:
    """What a plan minimises, and the value of a plan under it."""

    name: str = "time"
    energy: EnergyModel | None = None

    def plan(self, profile: Profile, method: str, pin_device: set[str], pin_server: set[str]) -> planner.Plan:
        return planner.plan(profile, method, pin_device, pin_server, objective=self.name, energy=self.energy)

    def value(self, profile: Profile, placement: planner.Plan) -> float:
        if self.name == "time":
            return placement.predicted_step_s
        return step_energy(profile, placement.device, self.energy or energy_model_for(profile)).total_j


def _plan_keeping_tied_tensors(
    gm: fx.GraphModule,
    profile: Profile,
    method: str,
    pin_device: set[str],
    pin_server: set[str],
    goal: _Objective = _Objective(),
) -> tuple[planner.Plan, dict[str, str]]:
    """Plan; if a tensor ends up used on both sides, try each side for each such tensor."""
    best = goal.plan(profile, method, pin_device, pin_server)
    shared = shared_across(gm, make_spec(gm, best.server))
    if not shared:
        return best, {}
    groups = [device_users + server_users for device_users, server_users in shared.values()]
    if len(groups) > 10:
        raise SplitError(f"{len(groups)} tied tensors are used on both sides; pin their users with pin_device=[...]")
    chosen: tuple[planner.Plan, dict[str, str]] | None = None
    for sides in itertools.product(("device", "server"), repeat=len(groups)):
        extra_device = {n for group, side in zip(groups, sides) if side == "device" for n in group}
        extra_server = {n for group, side in zip(groups, sides) if side == "server" for n in group}
        try:
            candidate = goal.plan(profile, method, pin_device | extra_device, pin_server | extra_server)
        except planner.PlanningError:
            continue
        if shared_across(gm, make_spec(gm, candidate.server)):
            continue
        if chosen is None or goal.value(profile, candidate) < goal.value(profile, chosen[0]):
            pins = {n: "device" for n in extra_device} | {n: "server" for n in extra_server}
            chosen = (candidate, pins)
    if chosen is None:
        raise SplitError(f"no placement keeps the tied tensors {sorted(shared)} on one side with the given pins")
    return chosen


def _profile_kind(profile: Profile) -> str:
    if "costs_from" in profile.extra:
        return f"costs from {profile.extra['costs_from']}"
    return estimated_by(profile) or "measured"


def _note(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
