"""Human-readable plan reports: the table ``lightning-split plan`` prints, and its JSON.

:func:`render_plan` turns a profile, its plan and the baseline costs into plain text (no
colours, no terminal width assumptions) so the CLI, ``SplitStrategy`` logs, the demo and
notebooks can all show the same thing. Every report shows the device's training memory and
energy per step beside the time (:mod:`lightning_split.planning.resources`).
:func:`plan_outcome` plans a profile and gathers everything a report shows (the plan, the
baselines in time and energy, the memory and energy), once, for the text, the ``plan --json``
object (:meth:`PlanOutcome.to_json`) and the picture alike. It needs no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_split.planning.constrained import plan_with_options
from lightning_split.planning.constraints import privacy_line
from lightning_split.planning.energy import EnergyModel, energy_model_for
from lightning_split.planning.pipelined import CODEC_RATIOS
from lightning_split.planning.planner import Plan
from lightning_split.planning.profile import Link, NodeCost, Profile
from lightning_split.planning.resources import Resources, baseline_energies, estimated_by, resources
from lightning_split.planning.units import format_bytes

__all__ = ["PlanOutcome", "format_bytes", "format_link", "plan_outcome", "render_plan"]

_BASELINE_LABELS = {
    "device_only": "device only",
    "server_only": "server only",
    "best_layerwise": "best layerwise",
}


def format_link(link: Link) -> str:
    """The link as ``"100 Mbit/s up, 100 Mbit/s down, rtt 2 ms"`` (:meth:`Link.describe`)."""
    return link.describe()


def _format_shape(node: NodeCost) -> str:
    shape = node.extra.get("shape")
    if isinstance(shape, Sequence) and not isinstance(shape, str) and shape:
        return "x".join(str(size) for size in shape)
    return "-"


def _count(items: Sequence[object], noun: str) -> str:
    return f"{len(items)} {noun}" + ("" if len(items) == 1 else "s")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    """Rows indented by two spaces, columns padded to their widest cell (right-aligned where asked)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right)]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _crossing_lines(profile: Profile, plan: Plan, options: Mapping[str, object]) -> list[str]:
    """What the codec puts on the wire, and whether a raw input crosses (only with a server part)."""
    if not plan.server:
        return []
    lines = []
    codec = str(options.get("codec", "none"))
    if codec != "none" and codec in CODEC_RATIOS:
        nodes = {node.name: node for node in profile.nodes}
        crossing = sum(nodes[cut].out_bytes for cut in plan.cut)
        ratio = CODEC_RATIOS[codec]
        lines.append(
            f"Codec {codec} (lossy): {ratio:g} of the raw bytes on the wire, {format_bytes(crossing * ratio)} "
            "of cut tensors per step each way"
        )
    lines.append(privacy_line(profile, plan.device, bool(options.get("private_inputs", True))))
    return lines


@dataclass(frozen=True)
class PlanOutcome:
    """A plan and everything its reports show: baselines in time and energy, memory and energy.

    Attributes:
        profile: the profile planned on.
        plan: the plan.
        baselines: the baselines' step times (``sequential_optimum`` among them).
        baseline_energies: the baselines' device joules per step.
        resources: the plan's device memory and energy.
        extra: the pipelining and constraint fields of ``plan --json`` (``micro_batches``,
            ``codec``, ``exact``, ``private_inputs``, ...; :mod:`~lightning_split.planning.constrained`).
        warnings: lines for stderr (a profile whose private inputs cannot be checked).
    """

    profile: Profile
    plan: Plan
    baselines: Mapping[str, float]
    baseline_energies: Mapping[str, float]
    resources: Resources
    extra: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``plan --json`` object: :meth:`Plan.to_json`'s keys, ``objective``, ``memory``,
        ``energy``, ``baselines_energy_j``, then the pipelining and constraint fields
        (``docs/profile-format.md``)."""
        data = self.plan.to_json(dict(self.baselines))
        data["objective"] = self.plan.objective
        data.update(self.resources.to_json())
        data["baselines_energy_j"] = dict(self.baseline_energies)
        data.update(self.extra)
        return data

    def crossing_lines(self) -> list[str]:
        """What the codec puts on the wire and whether a raw input crosses (the report's lines, for the picture)."""
        return _crossing_lines(self.profile, self.plan, self.extra)

    def render(self, title: str | None = None) -> str:
        """The text report (:func:`render_plan`)."""
        return render_plan(
            self.profile, self.plan, self.baselines, title, self.resources, self.baseline_energies, self.extra
        )


def plan_outcome(
    profile: Profile,
    method: str = "blockwise",
    objective: str = "time",
    energy: EnergyModel | None = None,
    pin_device: Iterable[str] = (),
    pin_server: Iterable[str] = (),
    **options: Any,
) -> PlanOutcome:
    """Plan ``profile`` for ``objective`` and gather what its reports show.

    ``energy`` is the device's power and radio (default: the profile's device preset, else an
    assumed Jetson Nano; :func:`~lightning_split.planning.energy.energy_model_for`).
    ``options`` are :func:`~lightning_split.planning.constrained.plan_with_options`'s
    ``micro_batches``, ``codec``, ``private_inputs`` (on by default) and ``device_memory``.

    Raises:
        PlanningError: as :func:`~lightning_split.planning.constrained.plan_with_options` does.
    """
    model = energy or energy_model_for(profile)
    pins = dict(pin_device=pin_device, pin_server=pin_server)
    found = plan_with_options(profile, method, **options, **pins, objective=objective, energy=model)
    return PlanOutcome(
        profile,
        found.plan,
        found.baselines,
        baseline_energies(profile, model),
        resources(profile, found.plan.device, model),
        found.extra,
        found.warnings,
    )


def render_plan(
    profile: Profile,
    plan: Plan,
    baselines: Mapping[str, float],
    title: str | None = None,
    found: Resources | None = None,
    energies: Mapping[str, float] | None = None,
    options: Mapping[str, object] | None = None,
) -> str:
    """Render a plan as a plain-text report.

    Sections: what was planned (model or profile name, node count, link, how many nodes run
    where), the cut (each crossing tensor's node, shape when the profile records one, and
    size), where the predicted step time goes (the five terms of ``docs/cost-model.md`` and
    their total), the plan against each baseline (ms and the reduction), the device's training
    memory and energy per step, and the solve time.

    Args:
        profile: the profile the plan was made from (node shapes and sizes come from it).
        plan: the plan to show.
        baselines: ``{"device_only": s, "server_only": s, "best_layerwise": s}`` as returned by
            :func:`lightning_split.planning.planner.baselines`; unknown keys are shown under their own name.
        title: what was planned; defaults to the profile's ``model`` or ``name`` field.
        found: the plan's memory and energy (computed when not given,
            :func:`~lightning_split.planning.resources.resources`).
        energies: the baselines' joules per step, shown beside their times when given.
        options: the plan's ``codec`` and ``private_inputs`` (``PlanOutcome.extra``): the report
            then says how many bytes the codec puts on the wire and whether any raw input crosses.

    Returns:
        The report, lines joined by ``\\n``, without a trailing newline.
    """
    found = found or resources(profile, plan.device)
    sections = [
        _header(profile, plan, title),
        _cut_section(profile, plan) + _crossing_lines(profile, plan, options or {}),
        _time_section(plan),
        _baselines_section(plan, baselines, found, energies),
        _resources_section(found),
        [f"Solved in {plan.solve_s * 1e3:.1f} ms"],
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines)


def _header(profile: Profile, plan: Plan, title: str | None) -> list[str]:
    name = title or profile.extra.get("model") or profile.extra.get("name") or "profile"
    details = [text for text in (estimated_by(profile),) if text]
    if profile.extra.get("batch_size") is not None:
        details.append(f"batch {profile.extra['batch_size']}")
    if plan.objective != "time":
        details.append(f"minimising device {plan.objective}")
    return [
        f"Plan for {name}" + (f" ({', '.join(details)})" if details else ""),
        f"  {_count(profile.nodes, 'node')}; link {format_link(profile.link)}",
        f"  method {plan.method}: {_count(plan.device, 'node')} on the device, {len(plan.server)} on the server",
    ]


def _cut_section(profile: Profile, plan: Plan) -> list[str]:
    nodes = {node.name: node for node in profile.nodes}
    lines = []
    if plan.cut:
        crossing = sum(nodes[cut].out_bytes for cut in plan.cut)
        verb = "crosses" if len(plan.cut) == 1 else "cross"
        lines.append(
            f"Cut: {_count(plan.cut, 'tensor')} {verb} to the server "
            f"({format_bytes(crossing)} per step; the gradients come back)"
        )
        rows = [[cut, _format_shape(nodes[cut]), format_bytes(nodes[cut].out_bytes)] for cut in plan.cut]
        lines += _table(["node", "shape", "size"], rows, [False, False, True])
    elif not plan.server:
        lines.append("Cut: none, the whole model runs on the device")
    else:
        lines.append("Cut: no tensor crosses to the server")
    server = set(plan.server)
    returned = [output for output in profile.outputs if output in server]
    if returned:
        listed = ", ".join(
            f"{output} ({_format_shape(nodes[output])}, {format_bytes(nodes[output].out_bytes)})" for output in returned
        )
        lines.append(f"Model outputs sent back to the device: {listed}")
    return lines


def _time_section(plan: Plan) -> list[str]:
    terms = plan.breakdown
    total = plan.predicted_step_s
    parts = [
        ("device compute", terms.device_s),
        ("server compute", terms.server_s),
        ("upload", terms.upload_s),
        ("download", terms.download_s),
        ("round trips (2 x rtt)", terms.rtt_s),
    ]
    rows = [[label, _ms(value), f"{100 * value / total:.1f}%" if total > 0 else "-"] for label, value in parts]
    rows.append(["total (predicted step)", _ms(total), "100.0%" if total > 0 else "-"])
    return ["Where the time goes", *_table(["term", "ms", "share"], rows, [False, True, True])]


def _saves(baseline: float, mine: float) -> str:
    return f"{100 * (baseline - mine) / baseline:.1f}%" if baseline > 0 else "-"


def _baselines_section(
    plan: Plan, baselines: Mapping[str, float], found: Resources, energies: Mapping[str, float] | None
) -> list[str]:
    if not baselines:
        return []
    total, joules = plan.predicted_step_s, found.energy.total_j
    rows = []
    for key, value in baselines.items():
        row = [_BASELINE_LABELS.get(key, key), _ms(value), _saves(value, total)]
        if energies is not None:
            energy = energies.get(key)
            row += ["-", "-"] if energy is None else [f"{energy:.3f}", _saves(energy, joules)]
        rows.append(row)
    header = ["baseline", "ms", "plan saves"] + (["J", "plan saves"] if energies is not None else [])
    return ["Against the baselines", *_table(header, rows, [False] + [True] * (len(header) - 1))]


def _resources_section(found: Resources) -> list[str]:
    memory, energy = found.memory, found.energy
    slots = memory.optimizer_slots
    how = "from the profile" if memory.measured else f"estimated from tensor sizes, {slots} optimizer slots"
    capacity = "" if found.capacity_bytes is None else f" of {format_bytes(found.capacity_bytes)}"
    fits = "" if found.fits is None else (" (fits)" if found.fits else " (does NOT fit)")
    parts = [("parameters", memory.parameters), ("gradients", memory.gradients),
             ("optimizer state", memory.optimizer_state), ("saved activations", memory.activations)]  # fmt: skip
    joules = [("compute", energy.compute_j), ("waiting", energy.idle_j), ("radio", energy.radio_j)]
    return [
        f"Device memory: {format_bytes(memory.total)}{capacity}{fits} ({how})",
        "  " + ", ".join(f"{label} {format_bytes(size)}" for label, size in parts),
        f"Device energy: {energy.total_j:.3f} J per step ({found.model.describe()})",
        "  "
        + ", ".join(f"{label} {value:.3f} J" for label, value in joules)
        + f"; {format_bytes(energy.sent_bytes)} sent and received",
    ]
