"""Live re-planning: the link limit changes mid-training, the cut moves, training stays equal to local.

Node costs are the FLOP estimate with a very slow device (``device_gflops=0.1``: 117 ms a
step) and the default GPU-class server, so the optimum depends only on the link: over the
unlimited loopback everything but the input runs on the server (cut ``[x]``, a few ms); over
``2mbit,40ms`` two round trips and the transfers (at least 156 ms) cost more than the whole
model on the device (device only). A noisy measurement of the loopback would have to read it
below about 1.2 Mbit/s to move the cut. Link probes are small (8 KiB) so that measuring the
slow link takes about half a second.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import lightning as L
import pytest
import torch

from lightning_split import SplitStrategy
from lightning_split.costs.estimate import estimate_profile
from lightning_split.graph.capture import trace_module
from lightning_split.planning.profile import Link, Profile
from tests.helpers import MemoryLogger, assert_same_parameters, trainer
from tests.models import DagNet, loader

SLOW = "2mbit,40ms"


class LinkSchedule(L.Callback):
    """Sets the strategy's emulated link limit when training reaches given optimizer steps."""

    def __init__(self, limits: dict[int, str | None]) -> None:
        self.limits = limits

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step in self.limits:
            trainer.strategy.set_link_limit(self.limits[trainer.global_step])


def replanning_strategy(
    server: str | None = None, link: str | None = None, every: int = 2, horizon: float | None = math.inf
) -> SplitStrategy:
    """Re-planning over measured links; ``horizon=math.inf`` (these tests check the migration itself) moves
    whenever the optimum moves, however much state the move sends over the slow link."""
    return SplitStrategy(
        server=server,
        link=link,
        costs="estimate",
        costs_options={"device_gflops": 0.1},
        replan_every=every,
        replan_horizon=horizon,
        probe_bytes=8192,
        probe_repeats=2,
        private_inputs=False,  # the optimum moves between server-only (the raw input crosses) and device-only
    )


def fit_pair(model_kwargs: dict, strategy: SplitStrategy, limits: dict[int, str | None], **trainer_kwargs):
    torch.manual_seed(0)
    local = DagNet(**model_kwargs)
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer(**trainer_kwargs).fit(local, loader())
    torch.manual_seed(1)
    callbacks = [LinkSchedule(limits), *trainer_kwargs.pop("callbacks", [])]
    trainer(strategy, callbacks=callbacks, **trainer_kwargs).fit(split, loader())
    return local, split


@pytest.mark.slow
def test_adam_steplr_boundary_moves_there_and_back_and_training_equals_local():
    """Fast, then slow, then fast again: parameters go home and back out with their Adam moments."""
    strategy = replanning_strategy()
    local, split = fit_pair({"optimizer": "adam", "lr": 0.01, "scheduler": True}, strategy, {6: SLOW, 12: None})
    # What holds on any machine: over the slow link the device runs everything, every move is
    # predicted to pay, and training equals local. Where the cut sits over the unlimited loopback
    # depends on how fast this machine's loopback measures (a loaded machine can read it slow).
    at = {record.step: record for record in strategy.replans}
    assert at[6].new_cut == () and at[6].link.rtt_s >= 0.04, "the emulated 40 ms: the device keeps everything"
    moves = [r for r in strategy.replans if r.moved]
    assert all(r.new_predicted_s < r.old_predicted_s for r in moves), "a move is made only when it is predicted to pay"
    assert len(strategy.placements) == 1 + len(moves)
    assert_same_parameters(local, split)


@pytest.mark.slow
def test_sgd_momentum_starts_slow_moves_to_the_server_and_training_equals_local():
    """The limit given at construction applies from the start; lifting it sends the suffix out."""
    logger = MemoryLogger()
    strategy = replanning_strategy(link=SLOW, every=3)
    local, split = fit_pair({"optimizer": "sgd", "momentum": 0.9}, strategy, {9: None}, logger=logger)
    assert len(strategy.placements) == 1 + sum(r.moved for r in strategy.replans)
    assert strategy.placements[0].server_nodes == (), "over the slow link the device runs everything"
    assert [r.step for r in strategy.replans] == [3, 6, 9, 12, 15, 18]
    assert all(not r.moved for r in strategy.replans if r.step < 9), "still the slow link: nothing moves"
    assert all(r.new_predicted_s <= r.old_predicted_s for r in strategy.replans)
    replan_metrics = [m for _, m in logger.metrics if "split/replans" in m]
    moved_so_far = list(itertools.accumulate(int(r.moved) for r in strategy.replans))
    assert [m["split/replans"] for m in replan_metrics] == moved_so_far
    assert all(m["split/predicted_step_s"] > 0 for m in replan_metrics)
    assert logger.hparams["split/link"] == "measured"
    assert_same_parameters(local, split)


@pytest.mark.slow
def test_replan_against_a_serve_process_with_accumulation_equals_local(dagnet_server):
    """A real `serve` process; with gradient accumulation the boundary moves only at real optimizer steps."""
    strategy = replanning_strategy(server=dagnet_server.url, every=1)
    local, split = fit_pair(
        {"optimizer": "sgd", "momentum": 0.9}, strategy, {4: SLOW}, accumulate_grad_batches=2, max_steps=7
    )
    assert [spec.cut for spec in strategy.placements] == [("x",), ()]
    assert [r.step for r in strategy.replans if r.moved] == [4]
    assert_same_parameters(local, split)


@pytest.mark.slow
def test_a_move_that_would_not_repay_its_migration_is_declined_and_training_equals_local():
    """Adam's DagNet over the slow link: the optimum moves home, but its state would take longer to come home
    (at least 84 KB at 2 Mbit/s and two 40 ms round trips) than two steps of device-only save (device only
    is 117 ms a step, the split at most about 2 x 40 ms + the input's 8 KiB dearer), so the cut stays."""
    strategy = replanning_strategy(every=2, horizon=None)
    local, split = fit_pair({"optimizer": "adam", "lr": 0.01}, strategy, {6: SLOW}, max_steps=10)
    record = {r.step: r for r in strategy.replans}[6]
    assert record.link.rtt_s >= 0.04, "measured through the emulated 40 ms"
    assert record.old_cut == ("x",), "over the loopback everything but the input runs on the server"
    assert record.optimal_cut == () and record.declined and not record.moved
    assert record.new_cut == record.old_cut and record.new_predicted_s == record.old_predicted_s
    plan = strategy.plan
    assert plan is not None and plan.profile is not None and plan.spec.cut == ("x",)
    device_only_s = plan.options.step_time(plan.profile, plan.profile.names)
    assert record.migration_s > 2 * (record.old_predicted_s - device_only_s) > 0, "2 steps save less than the move"
    assert "would not repay" in record.describe()
    assert len(strategy.placements) == 1
    assert_same_parameters(local, split)


def stem_friendly_costs() -> Profile:
    """Costs where the device is quick on the stem and slow on the rest, the server the other way round.

    Over a fast link the stem stays on the device (cut after it: 64 KiB); over ``2mbit,40ms``
    sending 64 KiB and its gradient (0.52 s) costs more than the server's slow stem (0.3 s),
    so the cut moves to the input (8 KiB). The switch is at about 3 Mbit/s; 32 KiB probes
    keep noisy measurements of the fast loopback well above it.
    """
    traced = trace_module(DagNet(), (torch.zeros(32, 1, 8, 8),))
    profile = estimate_profile(traced, Link.from_mbps(100))
    nodes = []
    for node in profile.nodes:
        if node.kind == "op":
            stem = node.name.startswith("stem_")
            node = dataclasses.replace(node, device_s=0.0 if stem else 0.1, server_s=0.1 if stem else 1e-4)
        nodes.append(node)
    return Profile(nodes, profile.outputs, profile.link, {"source": "test"})


@pytest.mark.slow
def test_part_of_the_model_migrates_with_clipping_and_training_equals_local():
    """Only the stem (conv, BatchNorm with its running statistics) changes sides, twice."""
    strategy = SplitStrategy(
        costs=stem_friendly_costs(),
        replan_every=3,
        replan_horizon=math.inf,  # the mechanism under test: a move whether or not the measured link says it pays
        probe_bytes=32768,
        probe_repeats=2,
        private_inputs=False,  # the stem moves to the server and back: the raw input crosses while it is there
    )
    local, split = fit_pair(
        {"optimizer": "sgd", "momentum": 0.9},
        strategy,
        {6: SLOW, 12: None},
        gradient_clip_val=0.3,
        gradient_clip_algorithm="norm",
    )
    assert [spec.cut for spec in strategy.placements] == [("stem_2",), ("x",), ("stem_2",)]
    assert [r.step for r in strategy.replans if r.moved] == [6, 12]
    assert_same_parameters(local, split)


def test_link_limit_changes_the_connection_while_training():
    strategy = replanning_strategy(link="5mbit,10ms")
    assert strategy.link is not None and strategy.link.rtt_s == pytest.approx(0.01)
    torch.manual_seed(0)
    trainer(strategy, max_steps=1).fit(DagNet(), loader(64))
    assert strategy.plan is not None and strategy.plan.link is not None
    assert strategy.plan.link.rtt_s >= 0.01, "measured through the emulated 10 ms"
    strategy.set_link_limit(None)
    assert strategy.link is None


def test_replan_needs_auto_cut_and_a_positive_interval():
    with pytest.raises(ValueError, match="cut='auto'"):
        SplitStrategy(cut="b", replan_every=2)
    with pytest.raises(ValueError, match="positive"):
        SplitStrategy(replan_every=0)
