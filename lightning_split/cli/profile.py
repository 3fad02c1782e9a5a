"""``lightning-split profile``: measure a model's node costs (and a server's, and the link) into a profile file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lightning_split.cli.common import (
    DEFAULT_RTT_MS,
    DEFAULT_UPLINK_MBPS,
    TOKEN_ENV,
    CommandError,
    build_model,
    input_shape,
    one_line,
    read_token,
)

_PROFILE_HELP = """\
Measure forward+backward seconds of every node on this machine and, with --server, on the
server (which times its own copy of the model), plus the link; write a profile that
`lightning-split plan PROFILE.json` plans (format: docs/profile-format.md).

Without --server the server's costs are estimated from FLOPs and the link is assumed (--link);
the profile says so in its fields server_s_source and link_source. Node costs are cached in
$LIGHTNING_SPLIT_CACHE (default ~/.cache/lightning-split), keyed by model graph, batch shape,
hardware and torch version, so measuring the same setup again is immediate.
"""


_DEFAULT_PROFILE_LINK = f"{DEFAULT_UPLINK_MBPS:g}mbit,{DEFAULT_RTT_MS:g}ms"


def add_parser(commands: Any) -> None:
    """The ``profile`` subcommand's arguments."""
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
    profile.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
    shape = input_shape(args.input_shape) if args.input_shape is not None else None
    model, init_args = build_model(args.model, args.init_args)
    try:
        inputs = example_inputs_for(model, shape)
        traced = trace_module(model, inputs, leaf_modules=args.leaf_module or ())
    except Exception as exc:  # ValueError for the shape, TraceError, or the forward failing on it
        raise CommandError(f"cannot trace {args.model}: {one_line(str(exc))}") from exc

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

    remote = RemoteServer(args.server, token=read_token(args.token_file))
    try:
        probe = typical_payload_bytes(traced)
        link = measure_link(remote, probe, probe)
        print(f"link to {args.server}: {link.describe()}", file=sys.stderr)
        server = profiler.server_costs(remote, traced, model_fields(args.model, init_args, traced, inputs, {}))
    except (ConnectionFailed, RemoteError) as exc:
        raise CommandError(one_line(str(exc))) from exc
    finally:
        remote.close()
    print(server.describe(), file=sys.stderr)
    return link, server
