"""An emulated link: a fast connection made to behave like a slower one, honestly under overlap.

A link has two directions. In each, messages *transmit* one after another: a message starts
transmitting when it is ready and the previous message in that direction has finished, and
takes ``bytes / rate`` seconds; it then *travels* half the round-trip time before it arrives.
So two messages sent at once on a 10 Mbit/s uplink take twice as long as one (the bandwidth is
shared, not multiplied), while the uplink and the downlink do not wait for each other.

The emulator only computes this schedule (:class:`Direction`) and waits for it
(:meth:`LinkEmulator.wait_until`); the caller holds each message back until its emulated
arrival: the device sends a request to the real socket at the request's arrival time, and uses
a reply only once the reply's arrival time has come. What the real connection costs comes on
top. The clock and the sleep are injectable, so the schedule is testable without waiting.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from lightning_split.planning.profile import Link

__all__ = ["Direction", "LinkEmulator"]


class Direction:
    """One direction of a link: a queue that transmits at ``bytes_per_s``, then ``latency_s`` of travel.

    Thread-safe: messages are scheduled in the order :meth:`schedule` is called.
    """

    def __init__(self, bytes_per_s: float, latency_s: float) -> None:
        if not bytes_per_s > 0 or not latency_s >= 0:
            raise ValueError(f"a link direction needs a rate > 0 and a latency >= 0, got {bytes_per_s}, {latency_s}")
        self.bytes_per_s = bytes_per_s
        self.latency_s = latency_s
        self.free_at = -math.inf  # when the message being transmitted finishes
        self._lock = threading.Lock()

    def schedule(self, nbytes: int, ready_at: float) -> float:
        """Queue a message of ``nbytes`` that is ready to transmit at ``ready_at``; return its arrival time."""
        with self._lock:
            start = max(ready_at, self.free_at)
            self.free_at = start + nbytes / self.bytes_per_s
            return self.free_at + self.latency_s


class LinkEmulator:
    """Delays the messages of one connection as ``link`` would (see the module docstring).

    Args:
        link: rates and round-trip time to emulate (``rtt_s / 2`` of latency each way).
        sleep: how to wait (``time.sleep``; a test passes a fake that advances its clock).
        clock: the monotonic clock the schedule is kept in (``time.perf_counter``).
    """

    def __init__(
        self,
        link: Link,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        link.validate()
        self.link = link
        self._sleep = sleep
        self._clock = clock
        self.uplink = Direction(link.uplink_bytes_per_s, link.rtt_s / 2)
        self.downlink = Direction(link.downlink_bytes_per_s, link.rtt_s / 2)

    def now(self) -> float:
        return self._clock()

    def uplink_arrival(self, nbytes: int, ready_at: float | None = None) -> float:
        """When a request of ``nbytes``, ready at ``ready_at`` (default: now), reaches the server."""
        return self.uplink.schedule(nbytes, self._clock() if ready_at is None else ready_at)

    def downlink_arrival(self, nbytes: int, ready_at: float | None = None) -> float:
        """When a reply of ``nbytes`` the server sent at ``ready_at`` (default: now) reaches the device."""
        return self.downlink.schedule(nbytes, self._clock() if ready_at is None else ready_at)

    def wait_until(self, moment: float) -> None:
        """Sleep until ``moment`` of the emulator's clock (at once if it has passed)."""
        delay = moment - self._clock()
        if delay > 0:
            self._sleep(delay)

    def before_send(self, nbytes: int) -> None:
        """Hold a request of ``nbytes`` back until it has crossed the emulated uplink."""
        self.wait_until(self.uplink_arrival(nbytes))

    def after_receive(self, nbytes: int, received_at: float | None = None) -> None:
        """Hold a reply of ``nbytes`` (received at ``received_at``) back until it has crossed the emulated downlink."""
        self.wait_until(self.downlink_arrival(nbytes, received_at))
