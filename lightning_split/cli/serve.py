"""``lightning-split serve``: the server-side part of split training over websockets."""

from __future__ import annotations

import argparse
import asyncio
import signal
import warnings
from pathlib import Path
from typing import Any

from lightning_split.cli.common import TOKEN_ENV, CommandError, import_model, json_object, read_token


def add_parser(commands: Any) -> None:
    """The ``serve`` subcommand's arguments."""
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
    serve.add_argument(
        "--status-every",
        type=float,
        default=30.0,
        help="log each federation's status every this many seconds, besides whenever it changes (0: only then; "
        "default: 30)",
    )
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
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM."""
    from lightning_split.serve.app import ServerPolicy, SplitServer, bound_url
    from lightning_split.serve.host import ModelHost
    from lightning_split.serve.limits import ModelLimits, default_max_model_bytes
    from lightning_split.transport import wire

    token = read_token(args.token_file)
    cls = import_model(args.model)
    init_args = json_object(args.init_args, "--init-args") if args.init_args else None
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
        status_every=max(0.0, args.status_every),
    )
    limits = ModelLimits(
        max_model_bytes=int(args.max_model_mb * 2**20)
        if args.max_model_mb is not None
        else default_max_model_bytes(args.device),
        max_example_bytes=int(args.max_example_mb * 2**20),
    )
    host = ModelHost(lambda init: cls(**dict(init)), args.model, device=args.device, init_args=init_args, limits=limits)
    server = SplitServer(host, token=token, policy=policy)

    async def serve_forever() -> None:
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
        asyncio.run(serve_forever())
    finally:
        server.close()
    return 0


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
