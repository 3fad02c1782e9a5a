"""Units, one owner: bytes and bits per second, and how sizes and rates are written for people.

Every conversion between bytes per second (what profiles store) and Mbit/s (what people and
metrics read) goes through :func:`mbit_per_s` and :func:`bytes_per_s`; every size and rate in
a report, a log line or a picture through :func:`format_bytes` and :func:`format_rate`.
"""

from __future__ import annotations

import math

BITS_PER_BYTE = 8
BYTES_PER_S_PER_MBIT_S = 1e6 / BITS_PER_BYTE


def mbit_per_s(bytes_per_second: float) -> float:
    """Bytes per second as Mbit/s (``inf`` stays ``inf``)."""
    return bytes_per_second / BYTES_PER_S_PER_MBIT_S


def bytes_per_s(mbit_per_second: float) -> float:
    """Mbit/s as bytes per second."""
    return mbit_per_second * BYTES_PER_S_PER_MBIT_S


def format_bytes(size: float) -> str:
    """``512 B``, ``3.00 KiB``, ``15.0 KiB``, ``1.50 MiB``, ``2.00 GiB``: binary units, three significant digits."""
    if size < 1024:
        return f"{size:.0f} B"
    for unit, scale in (("KiB", 1024.0), ("MiB", 1024.0**2), ("GiB", 1024.0**3)):
        value = size / scale
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if value >= 10 else f"{value:.2f} {unit}"
    raise AssertionError("unreachable")


def format_rate(bytes_per_second: float) -> str:
    """``"100 Mbit/s"``, ``"12.5 Mbit/s"`` or ``"unlimited"``."""
    if math.isinf(bytes_per_second):
        return "unlimited"
    return f"{mbit_per_s(bytes_per_second):.4g} Mbit/s"


def format_link(uplink_bytes_per_s: float, downlink_bytes_per_s: float, rtt_s: float) -> str:
    """``"100 Mbit/s up, 100 Mbit/s down, rtt 2 ms"``."""
    return f"{format_rate(uplink_bytes_per_s)} up, {format_rate(downlink_bytes_per_s)} down, rtt {rtt_s * 1e3:.4g} ms"


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BYTE_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_bytes(size: int | str) -> int:
    """``2000``, ``"2GB"`` (10**9), ``"512 MiB"`` (2**20), ``"1.5gb"`` as a whole number of bytes.

    Raises:
        ValueError: not a non-negative size with one of the units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 0:
            raise ValueError(f"a size in bytes must be >= 0, got {size}")
        return size
    text = str(size).strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _BYTE_UNITS or not (value >= 0 and math.isfinite(value)):
        raise ValueError(
            f"cannot read {size!r} as a size: expected bytes as an int or text like '2GB' or '512MiB' "
            "(units B, KB, MB, GB, TB in powers of 1000; KiB, MiB, GiB, TiB in powers of 1024)"
        )
    return int(value * _BYTE_UNITS[unit])
