"""Wire throughput: the frame codec alone, and a tensor through a real session against raw websockets.

Prints a table and writes JSON (``benchmarks/out/wire.json``). Every figure is the median of
``--repeats`` runs, and the ratios compare runs of the same size in the same process:

- ``encode`` / ``decode``: MB/s of :func:`lightning_split.transport.wire.encode` / ``decode`` on one
  float32 tensor (a memcpy-bound path does GB/s; an extra Python-level pass over the data
  would show as a drop to some hundred MB/s);
- ``encode_fragments`` / ``decode fragments``: the same without copies of the tensor bytes (the
  frame points into the tensor; the decoded tensor is a view of the received fragment);
- ``session ping``: a ``ping`` op carrying the tensor through an embedded server (framing,
  checks, the websocket and the reply) against two baselines on loopback, a bytes message of
  the same size echoed as an empty reply by a bare ``websockets`` server, sent by the same
  synchronous client: ``raw websockets (sync server)``, and ``raw websockets (asyncio
  server)``, the kind of server ``serve`` runs (the fair baseline: its event loop and stream
  buffer are costs the project's server cannot avoid).

    python benchmarks/wire.py [--mib 16] [--repeats 7] [--out benchmarks/out/wire.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import ROOT, machine_info, render_table

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
else:
    from benchmarks._common import ROOT, machine_info, render_table

import torch
from websockets.asyncio.server import serve as serve_asyncio
from websockets.sync.client import connect
from websockets.sync.server import serve

from lightning_split.serve.embedded import EmbeddedServer
from lightning_split.serve.host import ModelHost
from lightning_split.transport import messages, wire
from lightning_split.transport.client import RemoteServer


def median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def codec_rates(tensor: torch.Tensor, repeats: int) -> dict[str, float]:
    frame = wire.encode({"x": tensor})
    fragments = [bytes(part) for part in wire.encode_fragments({"x": tensor}).fragments]  # as received
    return {
        "encode_s": median_s(lambda: wire.encode({"x": tensor}), repeats),
        "decode_s": median_s(lambda: wire.decode(frame), repeats),
        "encode_fragments_s": median_s(lambda: wire.encode_fragments({"x": tensor}), repeats),
        "decode_fragments_s": median_s(lambda: wire.decode(fragments), repeats),
        "frame_bytes": len(frame),
    }


def session_ping_s(tensor: torch.Tensor, repeats: int) -> float:
    from tests.models import DagNet

    host = ModelHost(lambda init: DagNet(**dict(init)), "tests.models:DagNet")
    payload = tensor.view(torch.uint8).reshape(-1)
    with EmbeddedServer(host) as server:
        remote = RemoteServer(server.url)
        try:
            return median_s(lambda: remote.call([messages.Ping(payload=payload, reply_bytes=0)]), repeats)
        finally:
            remote.close()


def raw_websockets_s(nbytes: int, repeats: int) -> float:
    def echo(connection) -> None:
        for _ in connection:
            connection.send(b"")

    message = bytes(nbytes)
    with serve(echo, "127.0.0.1", 0, max_size=None, compression=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        with connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None, proxy=None) as ws:

            def round_trip() -> None:
                ws.send(message)
                ws.recv()

            result = median_s(round_trip, repeats)
        server.shutdown()
    return result


def raw_asyncio_websockets_s(nbytes: int, repeats: int) -> float:
    """As :func:`raw_websockets_s`, against an asyncio ``websockets`` server on its own thread (as ``serve``)."""
    import asyncio

    async def echo(connection) -> None:
        async for _ in connection:
            await connection.send(b"")

    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict = {}

    async def run() -> None:
        server = await serve_asyncio(echo, "127.0.0.1", 0, max_size=None, compression=None)
        state["port"] = next(iter(server.sockets)).getsockname()[1]
        state["stop"] = loop.create_future()
        started.set()
        await state["stop"]
        server.close()
        await server.wait_closed()

    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    started.wait()
    message = bytes(nbytes)
    try:
        with connect(f"ws://127.0.0.1:{state['port']}", max_size=None, compression=None, proxy=None) as ws:

            def round_trip() -> None:
                ws.send(message)
                ws.recv()

            return median_s(round_trip, repeats)
    finally:
        loop.call_soon_threadsafe(state["stop"].set_result, None)
        thread.join(timeout=10)
        loop.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16, help="tensor size in MiB (default 16)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "wire.json")
    args = parser.parse_args(argv)
    nbytes = args.mib * 2**20
    tensor = torch.randn(nbytes // 4)
    codec = codec_rates(tensor, args.repeats)
    session_s = session_ping_s(tensor, args.repeats)
    raw_s = raw_websockets_s(nbytes, args.repeats)
    raw_asyncio_s = raw_asyncio_websockets_s(nbytes, args.repeats)
    mb = nbytes / 1e6

    def row(name: str, seconds: float, ratios: bool = False) -> list[str]:
        extra = [f"{seconds / raw_s:.2f}", f"{seconds / raw_asyncio_s:.2f}"] if ratios else ["", ""]
        return [name, f"{seconds * 1e3:.1f}", f"{mb / seconds:.0f}", *extra]

    rows = [
        row("encode", codec["encode_s"]),
        row("decode", codec["decode_s"]),
        row("encode_fragments", codec["encode_fragments_s"]),
        row("decode fragments", codec["decode_fragments_s"]),
        row("session ping (embedded server)", session_s, ratios=True),
        row("raw websockets (sync server)", raw_s, ratios=True),
        row("raw websockets (asyncio server)", raw_asyncio_s, ratios=True),
    ]
    print(f"{args.mib} MiB float32 tensor, median of {args.repeats}")
    print(render_table(["path", "ms", "MB/s", "x raw sync", "x raw asyncio"], rows))
    report = {
        "benchmark": "wire",
        "machine": machine_info(("torch", "websockets")),
        "mib": args.mib,
        "repeats": args.repeats,
        **codec,
        "session_ping_s": session_s,
        "raw_websockets_s": raw_s,
        "raw_asyncio_websockets_s": raw_asyncio_s,
        "session_over_raw": session_s / raw_s,
        "session_over_raw_asyncio": session_s / raw_asyncio_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
