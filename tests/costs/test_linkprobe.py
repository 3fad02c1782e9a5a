"""The link measured with ``ping`` probes over the training connection."""

from __future__ import annotations

import math

from lightning_split.costs.linkprobe import MIN_PROBE_BYTES, measure_link, message_s
from lightning_split.serve.embedded import EmbeddedServer
from lightning_split.transport.client import RemoteServer


def test_measure_link_sees_the_emulated_delay(embedded: EmbeddedServer) -> None:
    """The emulator adds 40 ms and 20 Mbit/s on top of loopback; the measurement sees the delay.

    What holds on any machine: a sleep never undershoots, so the measured round trip is at least
    the emulated 40 ms, and the rates are finite and positive. How close the measured rates come
    to 20 Mbit/s is a timing figure, reported by ``benchmarks/prediction.py`` (RESULTS.md).
    """
    loopback, remote = RemoteServer(embedded.url), RemoteServer(embedded.url, link_limit="20mbit,40ms")
    try:
        real = measure_link(loopback, 250_000, 250_000, repeats=3)
        link = measure_link(remote, 250_000, 250_000, repeats=3)
    finally:
        loopback.close()
        remote.close()
    print(
        f"measured rtt {link.rtt_s * 1e3:.2f} ms (loopback alone {real.rtt_s * 1e3:.2f} ms), "
        f"up {link.uplink_bytes_per_s * 8e-6:.2f} Mbit/s, down {link.downlink_bytes_per_s * 8e-6:.2f} Mbit/s "
        "(emulated: 40 ms, 20 Mbit/s)"
    )
    assert link.rtt_s >= 0.040 and real.rtt_s > 0
    for rate in (link.uplink_bytes_per_s, link.downlink_bytes_per_s, real.uplink_bytes_per_s):
        assert 0 < rate < math.inf


def test_measure_link_pads_tiny_probes(embedded: EmbeddedServer) -> None:
    remote = RemoteServer(embedded.url)
    try:
        link = measure_link(remote, 10, 10, repeats=2)
    finally:
        remote.close()
    link.validate()
    assert math.isfinite(link.uplink_bytes_per_s) and math.isfinite(link.downlink_bytes_per_s)
    # 3 rounds (one untimed) carry a padded upload and a padded reply each
    assert remote.traffic.bytes_up >= 3 * MIN_PROBE_BYTES
    assert remote.traffic.bytes_down >= 3 * MIN_PROBE_BYTES


def test_message_s_is_the_cost_of_one_more_message_in_flight(embedded: EmbeddedServer) -> None:
    """Pings in flight overlap their emulated 40 ms round trips, so one more costs far less than a round trip.

    If the probe waited for each reply, every ping would add at least the 40 ms the emulator
    sleeps (a sleep never undershoots); in flight, one more ping adds only its own handling.
    """
    remote = RemoteServer(embedded.url, link_limit="1000mbit,40ms")
    try:
        link = measure_link(remote, 10, 10, repeats=2)
        serial = message_s(remote, link.rtt_s, repeats=1, in_flight=2)
    finally:
        remote.close()
    assert link.rtt_s >= 0.040
    assert link.message_s is not None and 0 <= link.message_s < 0.040
    assert 0 <= serial < 0.040
    assert link.to_json()["message_s"] == link.message_s
