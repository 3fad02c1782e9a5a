"""``lightning-split``: the command line (``serve``, ``plan``, ``profile``).

See ``SPEC.md`` section 3 for the contract and ``README.md`` for examples.
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

TOKEN_ENV = "LIGHTNING_SPLIT_TOKEN"


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
    serve.set_defaults(run=_serve)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from lightning_split.server import ModelHost, SplitServer, bound_url

    token = _read_token(args.token_file)
    cls = _import_model(args.model)
    init_args = _json_object(args.init_args, "--init-args") if args.init_args else None
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        warnings.warn(
            f"serving on {args.host} without a token: anyone who can reach this port can train on this server. "
            f"Use --token-file or ${TOKEN_ENV}.",
            stacklevel=1,
        )
    host = ModelHost(lambda init: cls(**dict(init)), args.model, device=args.device, init_args=init_args)
    server = SplitServer(host, token=token)

    async def run() -> None:
        started = await server.start(args.host, args.port)
        print(f"listening on {bound_url(started)}", flush=True)
        stop = asyncio.get_running_loop().create_future()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
        await stop
        started.close()
        await started.wait_closed()

    try:
        asyncio.run(run())
    finally:
        server.close()
    return 0


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
    from lightning_split.estimate import model_from_path

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


if __name__ == "__main__":
    sys.exit(main())
