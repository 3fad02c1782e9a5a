"""Wire throughput: the frame codec alone, and a tensor through a real session against raw websockets.

Prints a table and writes JSON (``benchmarks/out/wire.json``). Every figure is the median of
``--repeats`` runs, and the ratios compare runs of the same size in the same process:

- ``encode`` / ``decode``: MB/s of :func:`lightning_split.transport.wire.encode` / ``decode`` on one
  float32 tensor (a memcpy-bound path does GB/s; an extra Python-level pass over the data
  would show as a drop to some hundred MB/s);
- ``session ping``: a ``ping`` op carrying the tensor through an embedded server (framing,
  checks, the websocket and the reply) against ``raw websockets``: a bytes message of the same
  size echoed as an empty reply by a bare ``websockets`` server on loopback.

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
    return {
        "encode_s": median_s(lambda: wire.encode({"x": tensor}), repeats),
        "decode_s": median_s(lambda: wire.decode(frame), repeats),
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
    mb = nbytes / 1e6
    rows = [
        ["encode", f"{codec['encode_s'] * 1e3:.1f}", f"{mb / codec['encode_s']:.0f}", ""],
        ["decode", f"{codec['decode_s'] * 1e3:.1f}", f"{mb / codec['decode_s']:.0f}", ""],
        [
            "session ping (embedded server)",
            f"{session_s * 1e3:.1f}",
            f"{mb / session_s:.0f}",
            f"{session_s / raw_s:.2f}",
        ],
        ["raw websockets", f"{raw_s * 1e3:.1f}", f"{mb / raw_s:.0f}", "1.00"],
    ]
    print(f"{args.mib} MiB float32 tensor, median of {args.repeats}")
    print(render_table(["path", "ms", "MB/s", "x raw websockets"], rows))
    report = {
        "benchmark": "wire",
        "machine": machine_info(("torch", "websockets")),
        "mib": args.mib,
        "repeats": args.repeats,
        **codec,
        "session_ping_s": session_s,
        "raw_websockets_s": raw_s,
        "session_over_raw": session_s / raw_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
