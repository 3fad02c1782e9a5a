"""``lightning-split plan``: the placement of least predicted step time, from a profile or a model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from lightning_split.cli.common import (
    DEFAULT_RTT_MS,
    DEFAULT_UPLINK_MBPS,
    CommandError,
    build_model,
    input_shape,
    one_line,
)
from lightning_split.planning.pipelined import CODEC_RATIOS

logger = logging.getLogger("lightning_split.cli")


_PLAN_HELP = """\
Plan the device/server placement of minimum predicted step time (docs/cost-model.md).

From a profile file:   lightning-split plan PROFILE.json [--method blockwise|full] [--json]
From a model (estimated from FLOPs or hardware presets, nothing is measured):
  lightning-split plan --model pkg.module:Class --input-shape 32,3,32,32 [--device-gflops G]
      [--server-gflops G] [--uplink-mbps M] [--downlink-mbps M] [--rtt-ms R] [--out PROFILE.json] [--json]
  lightning-split plan --model pkg.module:Class --input-shape 32,3,32,32 --device jetson-nano --server t4
      --link 50mbit,5ms [--json]      (presets: lightning_split.planning.hardware, e.g. raspberry-pi-4, a10)
Either form takes --plot FILE.png|FILE.svg (the placed graph, the step time against bandwidth),
--objective time|energy and --radio wifi|lte (the device's energy per step), and the pipelining flags.
"""


# Options that only make sense when the profile is estimated from --model (a profile file
# carries its own node costs and link).
_LINK_NUMBERS = (("uplink_mbps", "--uplink-mbps"), ("downlink_mbps", "--downlink-mbps"), ("rtt_ms", "--rtt-ms"))


_MODEL_ONLY = (
    ("input_shape", "--input-shape"),
    ("init_args", "--init-args"),
    ("leaf_module", "--leaf-module"),
    ("device_gflops", "--device-gflops"),
    ("server_gflops", "--server-gflops"),
    ("device", "--device"),
    ("server", "--server"),
    ("link", "--link"),
    *_LINK_NUMBERS,
    ("out", "--out"),
)


def add_parser(commands: Any) -> None:
    """The ``plan`` subcommand's arguments."""
    from lightning_split.costs.estimate import DEFAULT_DEVICE_GFLOPS, DEFAULT_SERVER_GFLOPS

    plan = commands.add_parser(
        "plan",
        help="plan the optimal device/server cut of a profile or a model",
        description=_PLAN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("profile", nargs="?", metavar="PROFILE.json", help="a lightning-split-profile/1 file to plan")
    plan.add_argument(
        "--method",
        choices=("blockwise", "full"),
        default="blockwise",
        help="blockwise (series decomposition, fast) or full (one min cut); both are exact (default: blockwise)",
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object (docs/profile-format.md), not a table")
    plan.add_argument(
        "--plot",
        metavar="FILE.png|FILE.svg",
        help="also draw the placed graph and the step time against bandwidth into this file (needs matplotlib)",
    )
    plan.add_argument("--objective", choices=("time", "energy"), default="time", help="minimise this (default: time)")
    plan.add_argument("--radio", choices=("wifi", "lte"), help="the device's radio, for its energy (default: wifi)")
    shape = plan.add_argument_group("pipelining, codecs and constraints (docs/cost-model.md)")
    shape.add_argument("--micro-batches", default="1", metavar="M|auto", help="micro-batches per step (default: 1)")
    shape.add_argument("--codec", choices=tuple(CODEC_RATIOS), default="none", help="codec on the wire")
    shape.add_argument("--no-private-inputs", action="store_true", help="let raw inputs cross to the server")
    shape.add_argument("--device-memory", type=int, metavar="BYTES", help="device training memory budget")
    model = plan.add_argument_group("estimating a profile from a model (instead of PROFILE.json)")
    model.add_argument(
        "--model", metavar="pkg.module:Class", help="the model class, as pkg.module:Class (imported and traced here)"
    )
    model.add_argument(
        "--input-shape",
        metavar="SHAPE",
        help="shape of one training batch, e.g. 32,3,32,32 (default: the model's example_input_array)",
    )
    model.add_argument("--init-args", metavar="JSON", help="JSON object of constructor arguments (default: none)")
    model.add_argument(
        "--leaf-module",
        action="append",
        metavar="PATH",
        help="module path to keep as one opaque node, e.g. backbone.layer3 (repeatable)",
    )
    model.add_argument(
        "--device-gflops",
        type=float,
        metavar="G",
        help=f"effective GFLOP/s of the device (default: {DEFAULT_DEVICE_GFLOPS:g}, a Jetson Nano class board)",
    )
    model.add_argument(
        "--server-gflops",
        type=float,
        metavar="G",
        help=f"effective GFLOP/s of the server (default: {DEFAULT_SERVER_GFLOPS:g}, a T4 class GPU)",
    )
    model.add_argument("--device", metavar="PRESET", help="device hardware preset (jetson-nano): its roofline")
    model.add_argument("--server", metavar="PRESET", help="server hardware preset (t4): its roofline")
    model.add_argument("--link", metavar="LINK", help="the link as text, e.g. 50mbit,5ms or 10mbit/50mbit,20ms")
    model.add_argument(
        "--uplink-mbps", type=float, metavar="M", help=f"device to server Mbit/s (default: {DEFAULT_UPLINK_MBPS:g})"
    )
    model.add_argument("--downlink-mbps", type=float, metavar="M", help="server to device Mbit/s (default: the uplink)")
    model.add_argument("--rtt-ms", type=float, metavar="R", help=f"round-trip time in ms (default: {DEFAULT_RTT_MS:g})")
    model.add_argument("--out", metavar="PROFILE.json", help="also write the estimated profile to this file")
    plan.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Plan the placement and print it (a table, or ``--json``), optionally the picture."""
    from lightning_split.planning.energy import energy_model_for
    from lightning_split.planning.planner import PlanningError
    from lightning_split.report import plan_outcome

    if args.profile and args.model:
        raise CommandError("give either PROFILE.json or --model, not both")
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg"):
        raise CommandError(f"--plot {args.plot}: use a .png or .svg file name")
    if args.profile:
        given = [flag for attr, flag in _MODEL_ONLY if getattr(args, attr) is not None]
        if given:
            raise CommandError(f"{', '.join(given)} only apply with --model; a profile file has its own costs and link")
        profile, title = _load_profile(args.profile)
    elif args.model:
        profile, title = _estimate(args)
    else:
        raise CommandError("give a profile file (plan PROFILE.json) or a model (plan --model pkg.module:Class ...)")
    shape = dict(micro_batches=_micro_batches(args.micro_batches), codec=args.codec, device_memory=args.device_memory)
    shape["private_inputs"] = not args.no_private_inputs
    try:
        outcome = plan_outcome(profile, args.method, args.objective, energy_model_for(profile, args.radio), **shape)
    except (PlanningError, KeyError) as exc:  # KeyError: a profile naming an unknown hardware preset
        raise CommandError(one_line(str(exc))) from exc
    for warning in outcome.warnings:
        print(warning, file=sys.stderr)
    if args.plot:
        _plot(outcome, title, args.plot)
    print(json.dumps(outcome.to_json()) if args.json else outcome.render(title))
    return 0


def _micro_batches(text: str) -> int | str:
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise CommandError(f"--micro-batches {text}: give a positive integer or 'auto'")
    return text if text == "auto" else int(text)


def _plot(outcome: Any, title: str, path: str) -> None:
    """Write the ``--plot`` figure; say where on stderr, so ``--json`` keeps stdout to its one object."""
    from lightning_split.plot import PlotError, plot_plan

    try:
        written = plot_plan(
            outcome.profile,
            outcome.plan,
            path,
            outcome.baselines,
            title,
            found=outcome.resources,
            notes=outcome.crossing_lines(),
        )
    except PlotError as exc:
        raise CommandError(str(exc)) from exc
    except OSError as exc:
        raise CommandError(f"cannot write the figure to {path}: {exc.strerror or exc}") from exc
    print(f"wrote the plan figure to {written}", file=sys.stderr)


def _load_profile(path: str) -> tuple[Any, str]:
    from lightning_split.planning.profile import Profile, ProfileError

    try:
        profile = Profile.load(path)
    except OSError as exc:
        raise CommandError(f"cannot read the profile {path}: {exc.strerror or exc}") from exc
    except ProfileError as exc:
        raise CommandError(f"{path}: {one_line(str(exc))}") from exc
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # Wrong JSON types inside an otherwise well-formed file (a node that is not an object, ...).
        raise CommandError(f"{path}: malformed profile ({type(exc).__name__}: {one_line(str(exc))})") from exc
    return profile, str(profile.extra.get("model") or profile.extra.get("name") or path)


def _estimate(args: argparse.Namespace) -> tuple[Any, str]:
    """Import, build, trace and estimate the model of ``--model``; write ``--out`` if asked."""
    from lightning_split.costs.estimate import estimate_profile, example_inputs_for
    from lightning_split.graph.capture import trace_module

    shape = input_shape(args.input_shape) if args.input_shape is not None else None
    link = _link(args)
    model, init_args = build_model(args.model, args.init_args)
    try:
        inputs = example_inputs_for(model, shape)
    except ValueError as exc:
        raise CommandError(one_line(str(exc))) from exc
    logger.info("tracing %s on inputs of shape %s", args.model, [tuple(getattr(x, "shape", ())) for x in inputs])
    try:
        traced = trace_module(model, inputs, leaf_modules=args.leaf_module or ())
    except Exception as exc:  # TraceError, or the forward failing on the given shape
        raise CommandError(f"cannot trace {args.model}: {one_line(str(exc))}") from exc
    try:
        profile = estimate_profile(
            traced, link, args.device_gflops, args.server_gflops, device=args.device, server=args.server
        )
    except (ValueError, KeyError) as exc:  # KeyError: an unknown hardware preset, the known ones named
        raise CommandError(one_line(str(exc))) from exc
    if args.radio:
        profile.extra["radio"] = args.radio
    profile.extra["model"] = args.model
    if init_args:
        profile.extra["init_args"] = init_args
    if args.out:
        try:
            profile.save(args.out)
        except OSError as exc:
            raise CommandError(f"cannot write the profile to {args.out}: {exc.strerror or exc}") from exc
        logger.info("wrote the estimated profile to %s", args.out)
    return profile, args.model


def _link(args: argparse.Namespace) -> Any:
    """The link of ``--link`` or of ``--uplink-mbps``/``--downlink-mbps``/``--rtt-ms`` (not both)."""
    from lightning_split.planning.profile import Link, ProfileError

    numbers = [flag for attr, flag in _LINK_NUMBERS if getattr(args, attr) is not None]
    if args.link is not None and numbers:
        raise CommandError(f"give --link or {', '.join(numbers)}, not both")
    uplink = DEFAULT_UPLINK_MBPS if args.uplink_mbps is None else args.uplink_mbps
    rtt_ms = DEFAULT_RTT_MS if args.rtt_ms is None else args.rtt_ms
    try:
        link = Link.parse(args.link) if args.link is not None else Link.from_mbps(uplink, args.downlink_mbps, rtt_ms)
        link.validate()
    except ProfileError as exc:
        raise CommandError(f"bad link (--link/--uplink-mbps/--downlink-mbps/--rtt-ms): {exc}") from exc
    return link
