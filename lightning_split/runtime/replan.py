"""Live re-planning: measure the link again, plan again on the same node costs, move the boundary.

With ``replan_every=N`` a re-plan falls due after every N-th optimizer step
(:meth:`Replanner.step_done`) and is carried out at the start of the next training batch,
when that step's gradients are spent: :meth:`Replanner.replan` measures the link, plans on
the node costs of the first plan (:meth:`~lightning_split.runtime.placement.Placement.replanned`)
and, when the optimal placement changed and the move pays for itself, moves the boundary
(:meth:`~lightning_split.runtime.device.SplitRuntime.moved_to` migrates the parameters,
buffers and optimizer state of the server parts). A move pays when the predicted step time it
saves over ``horizon`` steps (default: until the next re-plan) exceeds its predicted migration
time (:mod:`lightning_split.planning.migration`). Each re-plan leaves a :class:`Replan` record.

:class:`LinkProbe` is the link the planner plans for, at the start and at each re-plan: the
one given, or one measured over the training connection (the measurement itself,
:func:`lightning_split.costs.measure.measure_link`, is the costs layer's; what is here is the
choice between given and measured and the probe sizes, which are the strategy's options).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass

from lightning_split.graph.capture import TracedModel
from lightning_split.planning.migration import migration, move_pays
from lightning_split.planning.profile import Link
from lightning_split.runtime.device import SplitRuntime
from lightning_split.runtime.placement import Placement
from lightning_split.transport.client import ConnectionFailed, RemoteServer
from lightning_split.transport.protocol import RemoteError

__all__ = ["LinkProbe", "Replan", "Replanner"]

log = logging.getLogger("lightning_split")


@dataclass(frozen=True)
class Replan:
    """One live re-plan: what the link measured, and where the boundary was and went.

    Attributes:
        step: optimizer steps done when it happened.
        link: the link measured (or given) for it.
        old_cut, new_cut: the cut tensors before and after (``()``: everything on the device).
        old_predicted_s: predicted step time of the old placement on the new link.
        new_predicted_s: predicted step time of the chosen placement on the new link.
        moved: whether the boundary moved (state and optimizer state migrated).
        seconds: time the re-plan took (measuring, planning, migrating).
        optimal_cut: the cut of the optimal placement on the new link; it differs from
            ``new_cut`` when that move would not have paid for its migration.
        migration_s: predicted time of the move to the optimal placement (0 when it is the old one).
    """

    step: int
    link: Link
    old_cut: tuple[str, ...]
    new_cut: tuple[str, ...]
    old_predicted_s: float
    new_predicted_s: float
    moved: bool
    seconds: float
    optimal_cut: tuple[str, ...] | None = None
    migration_s: float = 0.0

    @property
    def declined(self) -> bool:
        """Whether the optimum moved but the boundary stayed, because the move would not pay."""
        return self.optimal_cut is not None and self.optimal_cut != self.new_cut

    def describe(self) -> str:
        what = "moved" if self.moved else "kept"
        text = (
            f"re-plan at step {self.step} ({self.link.describe()}): {what} the cut "
            f"{_cut_text(self.old_cut)} -> {_cut_text(self.new_cut)}, predicted step "
            f"{self.old_predicted_s * 1e3:.2f} ms -> {self.new_predicted_s * 1e3:.2f} ms, took {self.seconds:.3f} s"
        )
        if self.declined:
            assert self.optimal_cut is not None
            text += (
                f"; the optimum {_cut_text(self.optimal_cut)} would not repay its {self.migration_s:.3f} s"
                " migration before the next re-plan"
            )
        return text


@dataclass(frozen=True)
class LinkProbe:
    """The link to plan for: ``given`` when there is one, else measured over the training connection.

    Attributes:
        given: the link to plan for (``plan_link``); ``None`` measures it.
        probe_bytes: payload bytes of the probes; ``None``: the median size of the model's
            tensors, within the limits of :func:`~lightning_split.costs.measure.measure_link`.
        repeats: timed rounds per measurement.
    """

    given: Link | None = None
    probe_bytes: int | None = None
    repeats: int = 5

    def link(self, remote: RemoteServer | None, traced: TracedModel) -> Link:
        """The given link, or one measured over ``remote`` with payloads sized for ``traced``."""
        if self.given is not None:
            return self.given
        from lightning_split.costs.linkprobe import (
            MAX_PROBE_BYTES,
            MIN_PROBE_BYTES,
            measure_link,
            typical_payload_bytes,
        )

        assert remote is not None
        if self.probe_bytes is not None:
            size = low = high = int(self.probe_bytes)
        else:
            size, low, high = typical_payload_bytes(traced), MIN_PROBE_BYTES, MAX_PROBE_BYTES
        return measure_link(remote, size, size, self.repeats, min_bytes=low, max_bytes=high)


class Replanner:
    """When to re-plan (every ``every`` optimizer steps) and the re-plan itself.

    Attributes:
        every: optimizer steps between re-plans (``None``: never).
        probe: where each re-plan's link comes from.
        horizon: steps over which a move must save more than its migration costs
            (``None``: ``every``; ``math.inf``: every move that saves time is made).
        steps: optimizer steps of the split runtime so far.
        replans: the records of the re-plans done, in order.
    """

    def __init__(self, every: int | None, probe: LinkProbe, horizon: float | None = None) -> None:
        self.every = every
        self.probe = probe
        self.horizon = horizon
        self.steps = 0
        self.replans: list[Replan] = []
        self._due = False

    @property
    def moves(self) -> int:
        """How many re-plans moved the boundary."""
        return sum(record.moved for record in self.replans)

    def step_done(self) -> None:
        """Count one optimizer step; every ``every``-th makes a re-plan due."""
        self.steps += 1
        if self.every is not None and self.steps % self.every == 0:
            self._due = True

    def take_due(self) -> bool:
        """Whether a re-plan is due (and it is no longer: the caller carries it out now)."""
        due, self._due = self._due, False
        return due

    def replan(
        self, plan: Placement, runtime: SplitRuntime, remote: RemoteServer | None
    ) -> tuple[Placement, SplitRuntime, Replan] | None:
        """Measure the link, plan again on ``plan``'s node costs, move the boundary if the optimum moved.

        Returns the placement and runtime to train with from now on (``runtime`` itself when
        the boundary stays) and the record; ``None`` when the link could not be measured
        (the placement stays, a warning says so). ``plan`` must have a profile.
        """
        started = time.perf_counter()
        try:
            link = self.probe.link(remote, plan.traced)
        except (ConnectionFailed, RemoteError) as exc:
            log.warning("lightning-split: no link measurement at step %d (%s); the placement stays", self.steps, exc)
            return None
        optimal = plan.replanned(link)
        old_server, new_server = plan.spec.server_nodes, optimal.spec.server_nodes
        old_s, new_s = _predicted(optimal, plan), _predicted(optimal, optimal)
        move_s = self._migration_s(optimal, old_server, new_server, link)
        moved = new_server != old_server and move_pays(old_s, new_s, self._horizon(), move_s)
        chosen = optimal if moved or new_server == old_server else dataclasses.replace(plan, profile=optimal.profile)
        if moved:
            runtime = runtime.moved_to(optimal.spec)
        record = Replan(
            step=self.steps,
            link=link,
            old_cut=_cut(plan),
            new_cut=_cut(chosen),
            old_predicted_s=old_s,
            new_predicted_s=new_s if moved else old_s,
            moved=moved,
            seconds=time.perf_counter() - started,
            optimal_cut=_cut(optimal),
            migration_s=move_s,
        )
        self.replans.append(record)
        log.info("lightning-split %s", record.describe())
        return chosen, runtime, record

    def _horizon(self) -> float:
        if self.horizon is not None:
            return self.horizon
        return self.every if self.every is not None else math.inf

    @staticmethod
    def _migration_s(plan: Placement, old_server: tuple[str, ...], new_server: tuple[str, ...], link: Link) -> float:
        assert plan.profile is not None
        return migration(plan.profile, old_server, new_server, plan.options.optimizer_slots).seconds(link)


def _predicted(on: Placement, placement: Placement) -> float:
    """Predicted step time of ``placement``'s split on ``on``'s profile (its link), with its options."""
    assert on.profile is not None
    server = set(placement.spec.server_nodes)
    return on.options.step_time(on.profile, [name for name in on.profile.names if name not in server])


def _cut(placement: Placement) -> tuple[str, ...]:
    return placement.spec.cut if placement.spec.server_nodes else ()


def _cut_text(cut: tuple[str, ...]) -> str:
    return "[" + ", ".join(cut) + "]" if cut else "(device only)"
