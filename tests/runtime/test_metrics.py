"""What the split logs (runtime/metrics.py) and when a re-plan falls due (runtime/replan.py), without a server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lightning_split.planning.profile import Link
from lightning_split.runtime.metrics import TrafficLog, link_metrics, replan_metrics
from lightning_split.runtime.replan import LinkProbe, Replanner
from lightning_split.transport.client import Traffic
from tests.helpers import MemoryLogger


def test_link_and_replan_metrics_names_and_units():
    link = Link.parse("10mbit/50mbit,5ms")
    assert link_metrics(link) == pytest.approx(
        {"split/link_up_mbit_s": 10.0, "split/link_down_mbit_s": 50.0, "split/link_rtt_ms": 5.0}
    )
    metrics = replan_metrics(link, 0.25, moves=2)
    assert list(metrics) == [
        "split/replans",
        "split/predicted_step_s",
        "split/link_up_mbit_s",
        "split/link_down_mbit_s",
        "split/link_rtt_ms",
    ]
    assert metrics["split/replans"] == 2.0 and metrics["split/predicted_step_s"] == 0.25


def test_traffic_log_averages_since_the_last_log():
    logger = MemoryLogger()
    trainer = SimpleNamespace(loggers=[logger], global_step=0, log_every_n_steps=2)
    runtime = SimpleNamespace(is_split=True, stats=Traffic())
    log = TrafficLog()
    for step in range(1, 6):
        runtime.stats = Traffic(bytes_up=100 * step, bytes_down=10 * step, round_trip_s=0.5 * step)
        trainer.global_step = step
        log.after_step(trainer, runtime)  # type: ignore[arg-type]
    assert [step for step, _ in logger.metrics] == [1, 3, 5], "the first step at once, then every 2 steps"
    assert logger.metrics[-1][1] == pytest.approx(
        {
            "split/bytes_up": 100.0,
            "split/bytes_down": 10.0,
            "split/remote_s": 0.5,
            "split/server_compute_s": 0.0,
            "split/wire_s": 0.5,
        }
    )
    assert log.last == logger.metrics[-1][1]
    log.after_step(trainer, SimpleNamespace(is_split=False))  # type: ignore[arg-type]
    log.after_step(None, runtime)  # type: ignore[arg-type]
    assert len(logger.metrics) == 3, "unsplit steps and steps outside a trainer are not logged"


def test_a_replan_falls_due_every_n_steps_once():
    replanner = Replanner(3, LinkProbe(Link.parse("1gbit,1ms")))
    due = []
    for _ in range(7):
        replanner.step_done()
        due.append(replanner.take_due())
    assert due == [False, False, True, False, False, True, False]
    assert not Replanner(None, LinkProbe()).take_due()


def test_a_given_link_is_not_measured():
    link = Link.parse("20mbit,10ms")
    assert LinkProbe(link).link(None, traced=None) is link  # type: ignore[arg-type]


def test_setup_traffic_is_logged_once_apart_from_the_steps():
    logger = MemoryLogger()
    trainer = SimpleNamespace(loggers=[logger], global_step=1, log_every_n_steps=1)
    setup = Traffic(bytes_up=42_000_000, bytes_down=1_000, round_trip_s=2.0)  # the suffix's weights went up
    runtime = SimpleNamespace(is_split=True, setup_traffic=setup, stats=Traffic(bytes_up=42_071_000, bytes_down=1_500))
    log = TrafficLog()
    log.after_step(trainer, runtime)  # type: ignore[arg-type]
    first = logger.metrics[0][1]
    assert first["split/bytes_up"] == 71_000 and first["split/bytes_down"] == 500
    assert first["split/setup_bytes_up"] == 42_000_000 and first["split/setup_remote_s"] == 2.0
    runtime.stats = Traffic(bytes_up=42_142_000, bytes_down=2_000)
    log.after_step(trainer, runtime)  # type: ignore[arg-type]
    assert "split/setup_bytes_up" not in logger.metrics[1][1] and logger.metrics[1][1]["split/bytes_up"] == 71_000
