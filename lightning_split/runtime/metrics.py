"""What the split reports to Lightning's loggers, all under ``split/`` names.

- The plan, once, as hyperparameters (:meth:`~lightning_split.runtime.placement.Placement.summary`,
  whose link figures come from :func:`link_metrics`), via :func:`log_hyperparams`.
- Per optimizer step, the traffic and timing of the split (:class:`TrafficLog`):
  ``split/bytes_up``, ``split/bytes_down``, ``split/remote_s`` (round trips),
  ``split/server_compute_s`` and ``split/wire_s`` (round trips less server compute), each
  averaged over the steps since the last log, logged every ``trainer.log_every_n_steps``.
  What opening the session cost (the suffix's weights, profiling, link probes) is not in them:
  the first log adds it once as ``split/setup_bytes_up``, ``split/setup_bytes_down`` and
  ``split/setup_remote_s``.
- Per live re-plan (:func:`replan_metrics`): ``split/replans`` (boundary moves so far),
  ``split/predicted_step_s`` and the measured link.

Every function takes the trainer (``None``: not attached, nothing is logged) and writes to
all of its loggers at ``trainer.global_step``.
"""

from __future__ import annotations

from typing import Any

from lightning_split.planning.profile import Link
from lightning_split.planning.units import mbit_per_s
from lightning_split.runtime.device import SplitRuntime
from lightning_split.transport.client import Traffic

__all__ = ["TrafficLog", "link_metrics", "log_hyperparams", "log_metrics", "replan_metrics"]


def link_metrics(link: Link) -> dict[str, float]:
    """``split/link_up_mbit_s``, ``split/link_down_mbit_s`` and ``split/link_rtt_ms`` of ``link``."""
    return {
        "split/link_up_mbit_s": mbit_per_s(link.uplink_bytes_per_s),
        "split/link_down_mbit_s": mbit_per_s(link.downlink_bytes_per_s),
        "split/link_rtt_ms": link.rtt_s * 1e3,
    }


def replan_metrics(link: Link, predicted_step_s: float, moves: int) -> dict[str, float]:
    """The figures of one re-plan: boundary moves so far, the new predicted step time, the link."""
    return {"split/replans": float(moves), "split/predicted_step_s": predicted_step_s, **link_metrics(link)}


def log_hyperparams(trainer: Any, params: dict[str, Any]) -> None:
    """``params`` to every logger of ``trainer`` as hyperparameters."""
    if trainer is None:
        return
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def log_metrics(trainer: Any, metrics: dict[str, float]) -> None:
    """``metrics`` to every logger of ``trainer`` at its global step."""
    if trainer is None:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


class TrafficLog:
    """Per-step traffic and timing of the split, averaged since the last log.

    The first split step is logged at once (there is nothing to average over yet), then
    every ``trainer.log_every_n_steps`` split steps. Steps that run unsplit are not counted.

    Attributes:
        last: the metrics logged last (empty before the first log).
    """

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self._logged: Traffic | None = None  # the cumulative traffic at the last log
        self._steps = 0  # split steps since the last log

    def after_step(self, trainer: Any, runtime: SplitRuntime | None) -> None:
        """Count one optimizer step; log the averages when a log is due."""
        if runtime is None or not runtime.is_split or trainer is None:
            return
        self._steps += 1
        every = max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1))
        if self._steps < every and self._logged is not None:
            return
        now = runtime.stats.snapshot()
        setup = getattr(runtime, "setup_traffic", None) or Traffic()
        delta, steps = now.since(self._logged or setup), self._steps
        metrics = {
            "split/bytes_up": delta.bytes_up / steps,
            "split/bytes_down": delta.bytes_down / steps,
            "split/remote_s": delta.round_trip_s / steps,
            "split/server_compute_s": delta.server_compute_s / steps,
        }
        metrics["split/wire_s"] = max(0.0, metrics["split/remote_s"] - metrics["split/server_compute_s"])
        if self._logged is None:
            metrics["split/setup_bytes_up"] = float(setup.bytes_up)
            metrics["split/setup_bytes_down"] = float(setup.bytes_down)
            metrics["split/setup_remote_s"] = setup.round_trip_s
        self._logged, self._steps = now, 0
        self.last = metrics
        log_metrics(trainer, metrics)
