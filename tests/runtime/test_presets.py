"""``SplitStrategy(costs="estimate", costs_options={"device": ..., "server": ...}, objective=...)``."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from lightning_split import SplitStrategy
from lightning_split.planning.energy import EnergyModel, step_energy
from lightning_split.planning.planner import plan
from tests.helpers import assert_same_parameters, trainer
from tests.models import DagNet, loader

PRESETS = {"device": "jetson-nano", "server": "t4"}


def test_presets_plan_the_auto_cut_and_the_log_shows_memory_and_energy(caplog):
    torch.manual_seed(0)
    local = DagNet()
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer(max_steps=2).fit(local, loader(64))
    strategy = SplitStrategy(costs="estimate", costs_options=PRESETS, plan_link="50mbit,5ms")
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="lightning_split"):
        trainer(strategy, max_steps=2).fit(split, loader(64))
    assert_same_parameters(local, split)
    placement = strategy.plan
    assert placement is not None and placement.profile is not None
    assert placement.profile.extra["device"] == "jetson-nano" and placement.profile.extra["server"] == "t4"
    assert placement.plan.device == plan(placement.profile).device
    assert "estimated by the roofline of jetson-nano and t4" in caplog.text
    assert "device memory" in caplog.text and "J per step (jetson-nano at 10 W" in caplog.text


def test_energy_objective_plans_the_least_energy_placement():
    model = EnergyModel.for_device("raspberry-pi-4", "lte")
    strategy = SplitStrategy(
        costs="estimate", costs_options={"device": "raspberry-pi-4", "server": "a10"}, plan_link="20mbit,20ms",
        objective="energy", energy=model,
    )  # fmt: skip
    trainer(strategy, max_steps=1).fit(DagNet(), loader(64))
    placement = strategy.plan
    assert placement is not None and placement.objective == "energy" and placement.plan.objective == "energy"
    best = plan(placement.profile, objective="energy", energy=model)
    mine = step_energy(placement.profile, placement.plan.device, model).total_j
    assert mine == pytest.approx(step_energy(placement.profile, best.device, model).total_j)
    replanned = placement.replanned(placement.profile.link)
    assert replanned.objective == "energy" and replanned.plan.objective == "energy"


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective='speed': expected one of time, energy"):
        SplitStrategy(objective="speed")
