"""Human-readable plan reports: the table ``lightning-split plan`` prints.

:func:`render_plan` turns a profile, its plan and the baseline costs into plain text (no
colours, no terminal width assumptions) so the CLI, ``SplitStrategy`` logs and notebooks can
all show the same thing. It needs no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lightning_split.planning.constraints import privacy_line
from lightning_split.planning.pipelined import CODEC_RATIOS
from lightning_split.planning.planner import Plan
from lightning_split.planning.profile import Link, NodeCost, Profile
from lightning_split.planning.units import format_bytes

__all__ = ["format_bytes", "format_link", "render_plan"]

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


def render_plan(
    profile: Profile,
    plan: Plan,
    baselines: Mapping[str, float],
    title: str | None = None,
    options: Mapping[str, object] | None = None,
) -> str:
    """Render a plan as a plain-text report.

    Sections: what was planned (model or profile name, node count, link, how many nodes run
    where), the cut (each crossing tensor's node, shape when the profile records one, and
    size), where the predicted step time goes (the five terms of ``docs/cost-model.md`` and
    their total), the plan against each baseline (ms and the reduction), and the solve time.

    Args:
        profile: the profile the plan was made from (node shapes and sizes come from it).
        plan: the plan to show.
        baselines: ``{"device_only": s, "server_only": s, "best_layerwise": s}`` as returned by
            :func:`lightning_split.planning.planner.baselines`; unknown keys are shown under their own name.
        title: what was planned; defaults to the profile's ``model`` or ``name`` field.
        options: the plan's ``codec`` and ``private_inputs`` (``PlanOutcome.extra``): the report
            then says how many bytes the codec puts on the wire and whether any raw input crosses.

    Returns:
        The report, lines joined by ``\\n``, without a trailing newline.
    """
    nodes = {node.name: node for node in profile.nodes}
    name = title or profile.extra.get("model") or profile.extra.get("name") or "profile"
    details = []
    if profile.extra.get("estimated"):
        details.append("estimated from FLOPs")
    if profile.extra.get("batch_size") is not None:
        details.append(f"batch {profile.extra['batch_size']}")
    lines = [f"Plan for {name}" + (f" ({', '.join(details)})" if details else "")]
    lines.append(f"  {_count(profile.nodes, 'node')}; link {format_link(profile.link)}")
    lines.append(
        f"  method {plan.method}: {_count(plan.device, 'node')} on the device, {len(plan.server)} on the server"
    )

    lines.append("")
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
    lines += _crossing_lines(profile, plan, options or {})

    lines.append("")
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
    lines.append("Where the time goes")
    lines += _table(["term", "ms", "share"], rows, [False, True, True])

    if baselines:
        lines.append("")
        lines.append("Against the baselines")
        rows = []
        for key, value in baselines.items():
            saved = f"{100 * (value - total) / value:.1f}%" if value > 0 else "-"
            rows.append([_BASELINE_LABELS.get(key, key), _ms(value), saved])
        lines += _table(["baseline", "ms", "plan saves"], rows, [False, True, True])

    lines.append("")
    lines.append(f"Solved in {plan.solve_s * 1e3:.1f} ms")
    return "\n".join(lines)
