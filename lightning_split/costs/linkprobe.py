"""The link measured over the connection training uses: round trip, uplink and downlink rates.

:func:`measure_link` times ``ping`` ops through a
:class:`~lightning_split.transport.client.RemoteServer`: empty ones for the round trip, ones
carrying a payload for the uplink, ones whose reply carries a payload for the downlink, and
empty ones in flight together for the cost of one more message (``message_s``).
:func:`typical_payload_bytes` sizes the probes before a cut is known.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import torch

from lightning_split.graph.capture import TracedModel
from lightning_split.planning.profile import Link
from lightning_split.transport import messages

if TYPE_CHECKING:
    from lightning_split.transport.client import RemoteServer

__all__ = [
    "MAX_PROBE_BYTES",
    "MESSAGE_PROBES",
    "MIN_PROBE_BYTES",
    "NOISE_FLOOR_S",
    "measure_link",
    "message_s",
    "ping_op",
    "typical_payload_bytes",
]

#: Link probes smaller than this are padded: below it the transfer hides in the round-trip noise.
MIN_PROBE_BYTES = 256 * 1024
#: Link probes larger than this are capped, so measuring a slow link stays quick.
MAX_PROBE_BYTES = 16 * 2**20
#: The smallest transfer time told apart from zero, whatever the spread of the round trips.
NOISE_FLOOR_S = 50e-6
#: Empty pings in flight at once to time the cost of one more message (``Link.message_s``).
MESSAGE_PROBES = 8


def ping_op(payload: torch.Tensor | None = None, reply_bytes: int = 0) -> messages.Ping:
    """A ``ping`` op carrying ``payload``; the reply carries ``reply_bytes`` bytes, the server's hardware and torch."""
    return messages.Ping(payload=payload, reply_bytes=reply_bytes)


def measure_link(
    remote: RemoteServer,
    up_bytes: int,
    down_bytes: int,
    repeats: int = 5,
    min_bytes: int = MIN_PROBE_BYTES,
    max_bytes: int = MAX_PROBE_BYTES,
) -> Link:
    """Measure round-trip time and both throughputs over ``remote``'s connection with ``ping`` ops.

    Per repeat (after one untimed round): an empty ping (the round trip), a ping carrying
    ``up_bytes`` (uplink) and a ping whose reply carries ``down_bytes`` (downlink), interleaved
    so drifts hit all three alike. ``rtt_s`` is the median empty round trip; a rate is the extra
    message bytes divided by the median extra time over that round trip. Sizes are clamped to
    ``[min_bytes, max_bytes]`` (a tiny probe's transfer hides in the noise; a huge one is slow).

    When a transfer takes less than the noise (``NOISE_FLOOR_S`` or twice the median absolute
    deviation of the round trips, whichever is larger), the link is faster than this probe can
    tell: the transfer time is then taken as that noise, which gives a finite lower bound of the
    rate, whose predicted cost for a payload of the probe's size is at most the noise.

    Through a :class:`~lightning_split.transport.client.RemoteServer` with ``link_limit`` the result is
    the emulated link (plus the real one underneath). ``message_s`` is :func:`message_s`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not 0 < min_bytes <= max_bytes:
        raise ValueError(f"need 0 < min_bytes <= max_bytes, got {min_bytes} and {max_bytes}")
    up = int(min(max(up_bytes, min_bytes), max_bytes))
    down = int(min(max(down_bytes, min_bytes), max_bytes))
    payload = torch.zeros(up, dtype=torch.uint8)
    probes = {"rtt": ping_op(), "up": ping_op(payload), "down": ping_op(reply_bytes=down)}
    samples: dict[str, list[tuple[float, int, int]]] = {kind: [] for kind in probes}
    for round_index in range(repeats + 1):
        for kind, op in probes.items():
            sample = _timed_call(remote, op)
            if round_index:
                samples[kind].append(sample)
    rtts = [s for s, _, _ in samples["rtt"]]
    rtt = statistics.median(rtts)
    noise = max(NOISE_FLOOR_S, 2 * statistics.median(abs(r - rtt) for r in rtts))
    base_up = statistics.median(u for _, u, _ in samples["rtt"])
    base_down = statistics.median(d for _, _, d in samples["rtt"])

    def rate(kind: str, which: int, base: float) -> float:
        extra_s = statistics.median(s[0] for s in samples[kind]) - rtt
        extra_bytes = statistics.median(s[which] for s in samples[kind]) - base
        return max(extra_bytes, 1) / max(extra_s, noise)

    return Link(rate("up", 1, base_up), rate("down", 2, base_down), rtt, message_s(remote, rtt, repeats))


def message_s(remote: RemoteServer, rtt_s: float, repeats: int = 5, in_flight: int = MESSAGE_PROBES) -> float:
    """The cost of one more message in flight: ``(T_n - rtt_s) / (n - 1)`` for ``n`` empty pings sent at once.

    A pipelined step with M micro-batches keeps M requests in flight; each costs the framing,
    the encoding and decoding, the two sides' dispatch and the scheduling of the threads that
    move it, once per message whatever its size. Sending ``n`` empty pings without waiting and
    timing the last reply measures that per-message cost where it is paid, in flight (the
    round trip is paid once). The median of ``repeats`` rounds, at least 0.
    """
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        replies = [remote.submit([ping_op()]) for _ in range(in_flight)]
        for reply in replies:
            reply.result()
        samples.append((time.perf_counter() - started - rtt_s) / (in_flight - 1))
    return max(0.0, statistics.median(samples))


def _timed_call(remote: RemoteServer, op: messages.Ping) -> tuple[float, int, int]:
    """Seconds of one request/reply, and its message bytes up and down."""
    before = remote.traffic.snapshot()
    started = time.perf_counter()
    remote.call([op])
    elapsed = time.perf_counter() - started
    spent = remote.traffic.since(before)
    return elapsed, spent.bytes_up, spent.bytes_down


def typical_payload_bytes(traced: TracedModel) -> int:
    """A probe size for :func:`measure_link` before the cut is known: the median output of the op nodes.

    Once a cut is planned, measuring again with the cut's bytes (and re-planning if the
    link differs much) sizes the probe exactly.
    """
    sizes = sorted(info.out_bytes for info in traced.nodes if info.op != "placeholder")
    return sizes[len(sizes) // 2] if sizes else MIN_PROBE_BYTES
