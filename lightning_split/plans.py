"""From a module and a batch to a placement: trace, cost, plan, check.

:func:`make_plan` is what ``SplitStrategy`` calls on the first forward. It traces the
module on the real batch, builds a cost profile (estimated from FLOPs, or measured), solves
for the optimal cut (or takes the user's), and keeps tensors shared by both sides (tied
weights) on one side by re-planning with pins. The result, :class:`SplitPlan`, renders
itself for logs (:meth:`SplitPlan.describe`) and loggers (:meth:`SplitPlan.summary`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from lightning_split import planner
from lightning_split.profile import Link, Profile
from lightning_split.programs import (
    SplitError,
    SplitSpec,
    device_spec_from_cut,
    example_skeleton,
    graph_summary,
    make_spec,
    shared_across,
)
from lightning_split.trace import TracedModel, trace_module

ProfileBuilder = Callable[[TracedModel, Link], Profile]

#: Link assumed for planning when none is given or measured: a Wi-Fi-class edge link.
DEFAULT_LINK = Link.from_mbps(100.0, 100.0, rtt_ms=2.0)


@dataclass
class SplitPlan:
    """A traced model and where each of its nodes runs.

    Attributes:
        traced: the trace (graph, per-node bytes and FLOPs).
        spec: the placement the programs are built from.
        source: how the placement was chosen (``"auto"`` or ``"cut=..."``).
        profile: the cost profile planned on (``None`` for a user cut without costs).
        plan: the planner's result (``None`` for a user cut).
        baselines: predicted step time of the baselines on the same profile.
        pins: extra pins added to keep tied tensors on one side.
    """

    traced: TracedModel
    spec: SplitSpec
    source: str
    profile: Profile | None = None
    plan: planner.Plan | None = None
    baselines: dict[str, float] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)
    example: dict[str, Any] = field(default_factory=dict)

    @property
    def graph_module(self) -> fx.GraphModule:
        return self.traced.graph_module

    def cut_rows(self) -> list[tuple[str, str, int]]:
        """(node, shape, bytes) of each tensor that crosses to the server."""
        rows = []
        for name in self.spec.cut:
            info = self.traced.node(name)
            rows.append((name, _shape_text(info.out_meta), info.out_bytes))
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
            lines.append(f"  cut tensor {name:<28} {shape:<22} {_bytes(size):>10}")
        predicted = self.predicted_step_s()
        if predicted is not None and self.profile is not None:
            lines.append(f"  predicted step: {predicted * 1e3:.2f} ms ({_profile_kind(self.profile)})")
            for name, value in self.baselines.items():
                lines.append(f"    vs {name:<15} {value * 1e3:10.2f} ms")
        if self.pins:
            lines.append(
                "  pinned to keep tied tensors on one side: " + ", ".join(f"{k}->{v}" for k, v in self.pins.items())
            )
        if self.traced.auto_leaves:
            lines.append("  untraceable submodules run whole: " + ", ".join(self.traced.auto_leaves))
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """Flat values for ``logger.log_hyperparams``."""
        data: dict[str, Any] = {
            "split/source": self.source,
            "split/cut": ",".join(self.spec.cut) or "(none)",
            "split/server_nodes": len(self.spec.server_nodes),
            "split/cut_bytes": sum(size for _, _, size in self.cut_rows()),
        }
        predicted = self.predicted_step_s()
        if predicted is not None:
            data["split/predicted_step_s"] = predicted
        for name, value in self.baselines.items():
            data[f"split/baseline_{name}_s"] = value
        return data

    def hello_fields(self) -> dict[str, Any]:
        """What the server needs to rebuild and check the same graph (shapes, never data or code)."""
        return {
            "fingerprint": self.traced.fingerprint(),
            "graph": graph_summary(self.graph_module),
            "leaf_modules": list(self.traced.leaf_modules),
            "example": self.example,
        }


def make_plan(
    module: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    cut: str | Sequence[str] = "auto",
    leaf_modules: Sequence[str | type] = (),
    pin_device: Sequence[str] = (),
    pin_server: Sequence[str] = (),
    link: Link | str | None = None,
    profile_builder: ProfileBuilder | None = None,
    method: str = "blockwise",
) -> SplitPlan:
    """Trace ``module`` on a batch and choose where each node runs.

    Args:
        module: the model.
        args, kwargs: one real call of ``module.forward``.
        cut: ``"auto"`` to plan, or node names / module paths whose nodes (and ancestors)
            run on the device.
        leaf_modules: module paths or classes to trace as single nodes.
        pin_device, pin_server: nodes the planner must keep on one side.
        link: the link to plan for (``Link``, text like ``"10mbit,20ms"``, or ``None`` for
            :data:`DEFAULT_LINK`).
        profile_builder: makes the cost profile from the trace and the link (default: the
            FLOP estimate of :func:`lightning_split.estimate.estimate_profile`).
        method: planner method.
    """
    traced = trace_module(module, tuple(args), dict(kwargs), leaf_modules)
    gm = traced.graph_module
    example = {"args": example_skeleton(list(args)), "kwargs": example_skeleton(dict(kwargs))}
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
        return SplitPlan(traced, spec, f"cut={','.join(names)}", example=example)

    if isinstance(link, str):
        link = Link.parse(link)
    link = link or DEFAULT_LINK
    if profile_builder is None:
        from lightning_split.estimate import estimate_profile

        profile = estimate_profile(traced, link)
    else:
        profile = profile_builder(traced, link)
    best, pins = _plan_keeping_tied_tensors(gm, profile, method, set(pin_device), set(pin_server))
    spec = make_spec(gm, best.server)
    return SplitPlan(traced, spec, "auto", profile, best, planner.baselines(profile), pins, example)


def _plan_keeping_tied_tensors(
    gm: fx.GraphModule, profile: Profile, method: str, pin_device: set[str], pin_server: set[str]
) -> tuple[planner.Plan, dict[str, str]]:
    """Plan; if a tensor ends up used on both sides, try each side for each such tensor."""
    best = planner.plan(profile, method, pin_device, pin_server)
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
            candidate = planner.plan(profile, method, pin_device | extra_device, pin_server | extra_server)
        except planner.PlanningError:
            continue
        if shared_across(gm, make_spec(gm, candidate.server)):
            continue
        if chosen is None or candidate.predicted_step_s < chosen[0].predicted_step_s:
            pins = {n: "device" for n in extra_device} | {n: "server" for n in extra_server}
            chosen = (candidate, pins)
    if chosen is None:
        raise SplitError(f"no placement keeps the tied tensors {sorted(shared)} on one side with the given pins")
    return chosen


def _shape_text(meta: Any) -> str:
    if isinstance(meta, tuple) and len(meta) == 3 and meta[0] == "tensor":
        return f"{meta[2]}[{','.join(str(d) for d in meta[1])}]"
    if isinstance(meta, tuple | list):
        return "(" + ", ".join(_shape_text(m) for m in meta) + ")"
    if isinstance(meta, dict):
        return "{" + ", ".join(f"{k}: {_shape_text(v)}" for k, v in meta.items()) + "}"
    return str(meta[1]) if isinstance(meta, tuple) and len(meta) == 2 else str(meta)


def _bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _profile_kind(profile: Profile) -> str:
    return "estimated from FLOPs" if profile.extra.get("estimated") else "measured"
