"""``lightning-split``: the command line (``serve``, ``plan``, ``profile``).

See ``docs/profile-format.md`` for the profile file and the ``plan --json`` object, and
``README.md`` for examples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_split.planning.profile import DEFAULT_LINK
from lightning_split.planning.units import mbit_per_s

TOKEN_ENV = "LIGHTNING_SPLIT_TOKEN"
logger = logging.getLogger("lightning_split.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-split`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        print(f"lightning-split {args.command}: error: {exc}", file=sys.stderr)
        return 2


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-split", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the server-side part of split training over websockets")
    serve.add_argument("--model", required=True, help="the model class, as pkg.module:Class (imported here)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (0 picks a free one; default: 8765)")
    serve.add_argument("--token-file", help=f"file holding the bearer token (default: ${TOKEN_ENV} if set)")
    serve.add_argument("--device", default="cpu", help="torch device for the suffixes: cpu or cuda (default: cpu)")
    serve.add_argument("--init-args", help="JSON object of constructor arguments, used instead of the client's")
    serve.add_argument("--certfile", help="TLS certificate chain (PEM): serve wss:// instead of ws://")
    serve.add_argument("--keyfile", help="TLS private key (PEM), with --certfile")
    serve.add_argument(
        "--state-dir", help="persist each session here at optimizer steps, so a restarted server resumes it"
    )
    serve.add_argument("--state-every", type=int, default=1, help="persist every N optimizer steps (default: 1)")
    serve.add_argument("--max-sessions", type=int, default=64, help="sessions held at once (default: 64)")
    serve.add_argument(
        "--idle-timeout", type=float, default=600.0, help="close connections silent this many seconds (default: 600)"
    )
    serve.add_argument(
        "--session-ttl",
        type=float,
        default=300.0,
        help="free a disconnected session's memory after this many seconds without resume (default: 300)",
    )
    serve.add_argument(
        "--max-message-mb", type=float, default=512.0, help="largest message accepted, in MiB (default: 512)"
    )
    serve.add_argument(
        "--max-model-mb",
        type=float,
        help="largest model (parameters and buffers) a device may ask for, in MiB; checked on the meta device "
        "before anything is allocated (default: a quarter of the server's memory)",
    )
    serve.add_argument(
        "--max-example-mb",
        type=float,
        default=256.0,
        help="largest example batch a device may ask the server to trace on, in MiB (default: 256)",
    )
    serve.add_argument("--threads", type=int, help="torch CPU threads for the server's compute (default: torch's)")
    serve.add_argument(
        "--allow-tf32",
        action="store_true",
        help="let CUDA use TF32 for float32 matmuls and convolutions (faster, but no longer equal to float32 training)",
    )
    serve.set_defaults(run=_serve)

    _add_plan_parser(commands)
    _add_profile_parser(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from lightning_split.serve.app import ServerPolicy, SplitServer, bound_url
    from lightning_split.serve.host import ModelHost
    from lightning_split.serve.limits import ModelLimits, default_max_model_bytes
    from lightning_split.transport import wire

    token = _read_token(args.token_file)
    cls = _import_model(args.model)
    init_args = _json_object(args.init_args, "--init-args") if args.init_args else None
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        warnings.warn(
            f"serving on {args.host} without a token: anyone who can reach this port can train on this server. "
            f"Use --token-file or ${TOKEN_ENV}.",
            stacklevel=1,
        )
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.allow_tf32:  # the split must not change the arithmetic: float32 stays float32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    context = _ssl_context(args.certfile, args.keyfile)
    policy = ServerPolicy(
        limits=wire.Limits(max_message_bytes=int(args.max_message_mb * 2**20)),
        max_sessions=args.max_sessions,
        idle_timeout=args.idle_timeout,
        session_ttl=args.session_ttl,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        state_every=max(1, args.state_every),
    )
    limits = ModelLimits(
        max_model_bytes=int(args.max_model_mb * 2**20)
        if args.max_model_mb is not None
        else default_max_model_bytes(args.device),
        max_example_bytes=int(args.max_example_mb * 2**20),
    )
    host = ModelHost(lambda init: cls(**dict(init)), args.model, device=args.device, init_args=init_args, limits=limits)
    server = SplitServer(host, token=token, policy=policy)

    async def run() -> None:
        started = await server.start(args.host, args.port, ssl_context=context)
        print(f"listening on {bound_url(started, secure=context is not None)}", flush=True)
        stop = asyncio.get_running_loop().create_future()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
        await stop
        started.close()
        await started.wait_closed()
        await server.stop_reaper()

    try:
        asyncio.run(run())
    finally:
        server.close()
    return 0


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
_DEFAULT_UPLINK_MBPS = mbit_per_s(DEFAULT_LINK.uplink_bytes_per_s)
_DEFAULT_RTT_MS = DEFAULT_LINK.rtt_s * 1e3


def _add_plan_parser(commands: Any) -> None:
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
    shape.add_argument("--codec", choices=("none", "fp16", "bf16", "int8"), default="none", help="codec on the wire")
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
        "--uplink-mbps", type=float, metavar="M", help=f"device to server Mbit/s (default: {_DEFAULT_UPLINK_MBPS:g})"
    )
    model.add_argument("--downlink-mbps", type=float, metavar="M", help="server to device Mbit/s (default: the uplink)")
    model.add_argument(
        "--rtt-ms", type=float, metavar="R", help=f"round-trip time in ms (default: {_DEFAULT_RTT_MS:g})"
    )
    model.add_argument("--out", metavar="PROFILE.json", help="also write the estimated profile to this file")
    plan.set_defaults(run=_plan)


def _plan(args: argparse.Namespace) -> int:
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
        raise CommandError(_one_line(str(exc))) from exc
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
        written = plot_plan(outcome.profile, outcome.plan, path, outcome.baselines, title, found=outcome.resources)
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
        raise CommandError(f"{path}: {_one_line(str(exc))}") from exc
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # Wrong JSON types inside an otherwise well-formed file (a node that is not an object, ...).
        raise CommandError(f"{path}: malformed profile ({type(exc).__name__}: {_one_line(str(exc))})") from exc
    return profile, str(profile.extra.get("model") or profile.extra.get("name") or path)


def _estimate(args: argparse.Namespace) -> tuple[Any, str]:
    """Import, build, trace and estimate the model of ``--model``; write ``--out`` if asked."""
    from lightning_split.costs.estimate import estimate_profile, example_inputs_for
    from lightning_split.graph.capture import trace_module

    shape = _input_shape(args.input_shape) if args.input_shape is not None else None
    link = _link(args)
    model, init_args = _build_model(args.model, args.init_args)
    try:
        inputs = example_inputs_for(model, shape)
    except ValueError as exc:
        raise CommandError(_one_line(str(exc))) from exc
    logger.info("tracing %s on inputs of shape %s", args.model, [tuple(getattr(x, "shape", ())) for x in inputs])
    try:
        traced = trace_module(model, inputs, leaf_modules=args.leaf_module or ())
    except Exception as exc:  # TraceError, or the forward failing on the given shape
        raise CommandError(f"cannot trace {args.model}: {_one_line(str(exc))}") from exc
    try:
        profile = estimate_profile(
            traced, link, args.device_gflops, args.server_gflops, device=args.device, server=args.server
        )
    except (ValueError, KeyError) as exc:  # KeyError: an unknown hardware preset, the known ones named
        raise CommandError(_one_line(str(exc))) from exc
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
    uplink = _DEFAULT_UPLINK_MBPS if args.uplink_mbps is None else args.uplink_mbps
    rtt_ms = _DEFAULT_RTT_MS if args.rtt_ms is None else args.rtt_ms
    try:
        link = Link.parse(args.link) if args.link is not None else Link.from_mbps(uplink, args.downlink_mbps, rtt_ms)
        link.validate()
    except ProfileError as exc:
        raise CommandError(f"bad link (--link/--uplink-mbps/--downlink-mbps/--rtt-ms): {exc}") from exc
    return link


def _import_model_factory(spec: str) -> Any:
    """The class named by ``pkg.module:Class``, or a function building the model (``torchvision.models:resnet18``)."""
    try:
        return _import_model(spec)
    except CommandError:
        # model_from_path accepts classes only; by now the module is imported if it exists.
        module_name, _, attr_path = spec.partition(":")
        obj: Any = sys.modules.get(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part, None)
        if obj is None or not callable(obj) or not attr_path:
            raise
        return obj


def _input_shape(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if not shape or any(size <= 0 for size in shape):
        raise CommandError(
            f"--input-shape must be positive integers separated by commas, e.g. 32,3,32,32; got {text!r}"
        )
    return shape


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _build_model(spec: str, init_args_text: str | None) -> tuple[Any, dict[str, Any]]:
    """Import ``pkg.module:Class`` and instantiate it with the ``--init-args`` JSON object (returned too)."""
    import torch

    factory = _import_model_factory(spec)
    init_args = _json_object(init_args_text, "--init-args") if init_args_text else {}
    try:
        model = factory(**init_args)
    except Exception as exc:  # the user's constructor can raise anything
        raise CommandError(f"cannot build {spec}: {type(exc).__name__}: {_one_line(str(exc))}") from exc
    if not isinstance(model, torch.nn.Module):
        raise CommandError(f"{spec} built a {type(model).__name__}, not a torch.nn.Module")
    return model, init_args


def _ssl_context(certfile: str | None, keyfile: str | None) -> Any:
    """A server TLS context from PEM files, or ``None`` for plain ws://."""
    if not certfile and not keyfile:
        return None
    if not certfile:
        raise CommandError("--keyfile needs --certfile")
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise CommandError(f"cannot load the TLS certificate {certfile} / key {keyfile}: {exc}") from exc
    return context


def _read_token(path: str | None) -> str | None:
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read the token file {path}: {exc.strerror}") from exc
        if not token:
            raise CommandError(f"the token file {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def _import_model(spec: str) -> Any:
    from lightning_split.costs.estimate import model_from_path

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return model_from_path(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CommandError(str(exc)) from exc


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CommandError(f"{what} must be a JSON object")
    return value


_PROFILE_HELP = """\
Measure forward+backward seconds of every node on this machine and, with --server, on the
server (which times its own copy of the model), plus the link; write a profile that
`lightning-split plan PROFILE.json` plans (format: docs/profile-format.md).

Without --server the server's costs are estimated from FLOPs and the link is assumed (--link);
the profile says so in its fields server_s_source and link_source. Node costs are cached in
$LIGHTNING_SPLIT_CACHE (default ~/.cache/lightning-split), keyed by model graph, batch shape,
hardware and torch version, so measuring the same setup again is immediate.
"""
_DEFAULT_PROFILE_LINK = f"{_DEFAULT_UPLINK_MBPS:g}mbit,{_DEFAULT_RTT_MS:g}ms"


def _add_profile_parser(commands: Any) -> None:
    profile = commands.add_parser(
        "profile",
        help="measure node costs (and the link) into a profile file",
        description=_PROFILE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    profile.add_argument("--model", required=True, metavar="pkg.module:Class", help="the model class (imported here)")
    profile.add_argument(
        "--input-shape",
        metavar="SHAPE",
        help="shape of one training batch, e.g. 32,3,32,32 (default: example_input_array)",
    )
    profile.add_argument(
        "--server", metavar="ws://HOST:PORT", help="a `lightning-split serve` to measure as the server"
    )
    profile.add_argument("--token-file", help=f"file holding the server's bearer token (default: ${TOKEN_ENV} if set)")
    profile.add_argument("--init-args", metavar="JSON", help="JSON object of constructor arguments (default: none)")
    profile.add_argument(
        "--leaf-module", action="append", metavar="PATH", help="module path to keep as one node (repeatable)"
    )
    profile.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed runs per node (default: 2)")
    profile.add_argument("--repeats", type=int, default=5, metavar="N", help="timed runs per node (default: 5)")
    profile.add_argument("--device", default="cpu", help="this machine's torch device: cpu or cuda (default: cpu)")
    profile.add_argument(
        "--link",
        metavar="LINK",
        help=f"link to record without --server, e.g. 20mbit,10ms (default: {_DEFAULT_PROFILE_LINK})",
    )
    profile.add_argument("--no-cache", action="store_true", help="measure again and leave the cache alone")
    profile.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $LIGHTNING_SPLIT_CACHE)")
    profile.add_argument("-o", "--out", required=True, metavar="PROFILE.json", help="where to write the profile")
    profile.set_defaults(run=_profile)


def _profile(args: argparse.Namespace) -> int:
    """Build and trace the model, measure both sides (or estimate the server), write the profile."""
    import torch

    from lightning_split.costs.estimate import DEFAULT_SERVER_GFLOPS, estimate_profile, example_inputs_for
    from lightning_split.costs.measure import ProfileCache, Profiler, measured_profile
    from lightning_split.graph.capture import trace_module
    from lightning_split.planning.profile import Link, ProfileError

    if args.warmup < 0 or args.repeats < 1:
        raise CommandError("--warmup must be >= 0 and --repeats >= 1")
    if args.server and args.link:
        raise CommandError("--link is for profiles without --server; with --server the link is measured")
    try:
        link = Link.parse(args.link or _DEFAULT_PROFILE_LINK)
        link.validate()
    except ProfileError as exc:
        raise CommandError(f"bad --link: {exc}") from exc
    shape = _input_shape(args.input_shape) if args.input_shape is not None else None
    model, init_args = _build_model(args.model, args.init_args)
    try:
        inputs = example_inputs_for(model, shape)
        traced = trace_module(model, inputs, leaf_modules=args.leaf_module or ())
    except Exception as exc:  # ValueError for the shape, TraceError, or the forward failing on it
        raise CommandError(f"cannot trace {args.model}: {_one_line(str(exc))}") from exc

    profiler = Profiler(None if args.no_cache else ProfileCache(args.cache_dir), args.warmup, args.repeats, args.device)
    device = profiler.device_costs(traced, inputs)
    print(device.describe(), file=sys.stderr)
    extra: dict[str, Any] = {
        "model": args.model,
        "init_args": init_args,
        "device_hardware": device.hardware,
        "device_measure_s": device.measure_s,
        "device_cached": device.cached,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
    }
    if args.server:
        link, server = _profile_server(args, profiler, traced, inputs, init_args)
        server_s = server.node_s
        extra.update(
            server_hardware=server.hardware,
            server_measure_s=server.measure_s,
            server_cached=server.cached,
            link_source="measured",
        )
    else:
        estimate = estimate_profile(traced, link)
        server_s = {node.name: node.server_s for node in estimate.nodes}
        extra.update(server_s_source="estimated", server_gflops=DEFAULT_SERVER_GFLOPS, link_source="assumed")
        print(
            f"no --server: server costs are estimated from FLOPs ({DEFAULT_SERVER_GFLOPS:g} GFLOP/s) and the link "
            f"is assumed ({args.link or _DEFAULT_PROFILE_LINK}); give --server ws://... to measure them",
            file=sys.stderr,
        )
    profile = measured_profile(traced, device.node_s, server_s, link, extra)
    try:
        profile.save(args.out)
    except OSError as exc:
        raise CommandError(f"cannot write the profile to {args.out}: {exc.strerror or exc}") from exc
    print(f"wrote {args.out} ({len(profile.nodes)} nodes)")
    return 0


def _profile_server(
    args: argparse.Namespace, profiler: Any, traced: Any, inputs: tuple[Any, ...], init_args: dict[str, Any]
) -> tuple[Any, Any]:
    """Measure the link and the server's node costs over one connection to ``--server``."""
    from lightning_split.costs.measure import measure_link, model_fields, typical_payload_bytes
    from lightning_split.transport.client import ConnectionFailed, RemoteServer
    from lightning_split.transport.protocol import RemoteError

    remote = RemoteServer(args.server, token=_read_token(args.token_file))
    try:
        probe = typical_payload_bytes(traced)
        link = measure_link(remote, probe, probe)
        print(f"link to {args.server}: {link.describe()}", file=sys.stderr)
        server = profiler.server_costs(remote, traced, model_fields(args.model, init_args, traced, inputs, {}))
    except (ConnectionFailed, RemoteError) as exc:
        raise CommandError(_one_line(str(exc))) from exc
    finally:
        remote.close()
    print(server.describe(), file=sys.stderr)
    return link, server


if __name__ == "__main__":
    sys.exit(main())
