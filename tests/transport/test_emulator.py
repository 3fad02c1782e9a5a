"""The link emulator's schedule, checked on a fake clock: each direction transmits one message at a time."""

from __future__ import annotations

import math
import threading

import pytest

from lightning_split.planning.profile import Link
from lightning_split.transport.emulator import Direction, LinkEmulator

MB = 1_000_000


class FakeClock:
    """A clock that only moves when the code under test sleeps; it records every sleep."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def emulator(up_mb_s: float = 1.0, down_mb_s: float = 2.0, rtt_s: float = 0.010) -> tuple[LinkEmulator, FakeClock]:
    clock = FakeClock()
    return LinkEmulator(Link(up_mb_s * MB, down_mb_s * MB, rtt_s), sleep=clock.sleep, clock=clock), clock


def test_one_message_on_an_idle_link_takes_its_transmission_plus_half_the_round_trip():
    link, _ = emulator()
    assert link.uplink_arrival(MB // 2) == pytest.approx(100.0 + 0.5 + 0.005)
    assert link.downlink_arrival(MB, ready_at=200.0) == pytest.approx(200.0 + 0.5 + 0.005)


def test_overlapping_messages_share_the_bandwidth_of_one_direction():
    link, _ = emulator(up_mb_s=1.0, rtt_s=0.010)
    arrivals = [link.uplink_arrival(MB // 4, ready_at=100.0) for _ in range(4)]
    # Each starts when the previous one finished transmitting: 0.25 s apart, the last at 1 s + latency.
    assert arrivals == pytest.approx([100.25 + 0.005, 100.5 + 0.005, 100.75 + 0.005, 101.0 + 0.005])


def test_a_message_ready_after_the_queue_drained_does_not_wait():
    link, _ = emulator(up_mb_s=1.0, rtt_s=0.0)
    assert link.uplink_arrival(MB // 10, ready_at=100.0) == pytest.approx(100.1)
    assert link.uplink_arrival(MB // 10, ready_at=100.05) == pytest.approx(100.2)  # queued behind the first
    assert link.uplink_arrival(MB // 10, ready_at=105.0) == pytest.approx(105.1)  # link idle again


def test_the_two_directions_do_not_wait_for_each_other():
    link, _ = emulator(up_mb_s=1.0, down_mb_s=1.0, rtt_s=0.0)
    up = link.uplink_arrival(MB, ready_at=100.0)
    down = link.downlink_arrival(MB, ready_at=100.0)
    assert up == pytest.approx(101.0) and down == pytest.approx(101.0)


def test_before_send_and_after_receive_sleep_what_a_sequential_exchange_costs():
    link, clock = emulator(up_mb_s=1.0, down_mb_s=2.0, rtt_s=0.020)
    link.before_send(MB)
    link.after_receive(MB)
    assert clock.sleeps == pytest.approx([1.0 + 0.010, 0.5 + 0.010])
    assert clock.t == pytest.approx(100.0 + 1.52)


def test_a_reply_received_earlier_waits_only_for_the_rest_of_its_schedule():
    link, clock = emulator(down_mb_s=1.0, rtt_s=0.0)
    received_at = clock.t
    clock.t += 0.3  # the device computed meanwhile
    link.after_receive(MB // 2, received_at=received_at)
    assert clock.sleeps == pytest.approx([0.2])


def test_pipelined_requests_arrive_back_to_back_while_the_sender_is_free():
    """Four requests handed over at once: the sender waits for each arrival, so the last leaves after 4 x."""
    link, clock = emulator(up_mb_s=1.0, rtt_s=0.010)
    ready = clock.t
    for _ in range(4):
        link.wait_until(link.uplink_arrival(MB // 4, ready_at=ready))
    assert clock.t == pytest.approx(ready + 1.0 + 0.005)


def test_an_unlimited_link_costs_only_its_latency():
    link = LinkEmulator(Link(math.inf, math.inf, 0.004), sleep=lambda s: None, clock=lambda: 0.0)
    assert link.uplink_arrival(10 * MB) == pytest.approx(0.002)
    assert link.uplink_arrival(10 * MB) == pytest.approx(0.002)


def test_concurrent_schedules_serialise():
    direction = Direction(1000.0, 0.0)
    arrivals: list[float] = []
    lock = threading.Lock()

    def send() -> None:
        for _ in range(50):
            arrival = direction.schedule(10, ready_at=0.0)
            with lock:
                arrivals.append(arrival)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(arrivals) == pytest.approx([0.01 * (i + 1) for i in range(200)])


def test_invalid_rates_are_refused():
    with pytest.raises(ValueError, match="rate > 0"):
        Direction(0.0, 0.0)
