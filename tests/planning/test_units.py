"""One owner for units: Mbit/s conversions and how sizes, rates and links read."""

from __future__ import annotations

import math

from lightning_split.planning.profile import Link
from lightning_split.planning.units import bytes_per_s, format_bytes, format_rate, mbit_per_s


def test_conversions_are_inverse_and_bits_are_eight_per_byte():
    assert bytes_per_s(100) == 12.5e6
    assert mbit_per_s(12.5e6) == 100
    assert mbit_per_s(math.inf) == math.inf


def test_sizes_rates_and_links_read_the_same_everywhere():
    assert format_bytes(3 * 1024) == "3.00 KiB" and format_bytes(1023) == "1023 B"
    assert format_rate(bytes_per_s(12.5)) == "12.5 Mbit/s" and format_rate(math.inf) == "unlimited"
    assert Link.parse("10mbit/50mbit,5ms").describe() == "10 Mbit/s up, 50 Mbit/s down, rtt 5 ms"
    assert Link.from_mbps(100, rtt_ms=2) == Link(12.5e6, 12.5e6, 0.002)
