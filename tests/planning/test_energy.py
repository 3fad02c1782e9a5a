"""The device's energy per step: its terms, and the energy objective against brute force."""

from __future__ import annotations

import itertools
import random

import pytest

from lightning_split.planning.energy import EnergyModel, crossing_bytes, energy_profile, step_energy
from lightning_split.planning.hardware import RADIOS, Radio, preset
from lightning_split.planning.planner import PlanningError, is_feasible, plan, step_time
from lightning_split.planning.profile import Link, NodeCost, Profile, chain_profile
from lightning_split.planning.resources import baseline_energies, resources

TOL = 1e-9


def random_dag(seed: int, n_ops: int) -> Profile:
    """A small DAG: one or two inputs, ops consuming one to three earlier nodes, one or two outputs."""
    rng = random.Random(seed)
    nodes = [NodeCost("x", "input", (), rng.randint(0, 4000), 0.0, 0.0)]
    if rng.random() < 0.3:
        nodes.append(NodeCost("y", "input", (), rng.randint(0, 4000), 0.0, 0.0))
    for i in range(n_ops):
        earlier = [node.name for node in nodes]
        inputs = tuple(dict.fromkeys(rng.choice(earlier) for _ in range(rng.randint(1, 3))))
        nodes.append(NodeCost(f"op{i}", "op", inputs, rng.randint(0, 4000), rng.uniform(0, 2e-3), rng.uniform(0, 2e-4)))
    ops = [node.name for node in nodes if node.kind == "op"]
    outputs = list(dict.fromkeys([ops[-1], rng.choice(ops)]))
    up = rng.choice([1e5, 1e6, 1e7])
    return Profile(nodes, outputs, Link(up, up * rng.choice([1.0, 4.0]), rng.choice([0.0, 1e-3, 5e-3])))


def feasible_placements(profile: Profile):
    names = profile.names
    inputs = [node.name for node in profile.nodes if node.kind == "input"]
    ops = [name for name in names if name not in inputs]
    for chosen in itertools.product((True, False), repeat=len(ops)):
        device = inputs + [name for name, here in zip(ops, chosen) if here]
        if is_feasible(profile, device):
            yield device


MODELS = [
    EnergyModel.for_device("jetson-nano", "wifi"),
    EnergyModel.for_device("raspberry-pi-4", "lte"),
    EnergyModel(3.0, 1.5, RADIOS["wifi"]),
    EnergyModel(10.0, 0.0, Radio("free", "free radio", 0.0, 0.0, 0.0, "test")),
]


@pytest.mark.parametrize("seed", range(40))
def test_energy_objective_equals_brute_force_on_small_random_dags(seed):
    profile = random_dag(seed, n_ops=random.Random(seed).randint(1, 9))
    model = MODELS[seed % len(MODELS)]
    joules = energy_profile(profile, model)
    best = min(step_energy(profile, device, model).total_j for device in feasible_placements(profile))
    for method in ("blockwise", "full", "exhaustive"):
        planned = plan(joules, method)
        assert is_feasible(profile, planned.device)
        energy = step_energy(profile, planned.device, model).total_j
        assert energy == pytest.approx(best, rel=TOL, abs=1e-12), method
        # The rewritten profile's step time of the plan is the plan's energy.
        assert planned.predicted_step_s == pytest.approx(energy, rel=1e-6, abs=1e-9)


def test_energy_terms_of_a_split_chain():
    profile = chain_profile([1.0, 2.0], [0.5, 0.25], [100, 10], Link(1000.0, 500.0, 0.01), input_bytes=400)
    radio = Radio("r", "radio", up_w_per_mbps=0.125, down_w_per_mbps=0.25, active_w=0.5, source="test")
    model = EnergyModel(4.0, 1.0, radio)
    device = ["x", "n0"]
    terms = step_time(profile, device)
    energy = step_energy(profile, device, model)
    # n0's output up and its gradient down, the model output n1 down and its gradient up.
    assert crossing_bytes(profile, device) == energy.sent_bytes == 100 + 10
    assert energy.compute_j == pytest.approx(4.0 * 1.0)
    link_busy = 110 / 1000 + 110 / 500 + 2 * 0.01
    assert energy.idle_j == pytest.approx(1.0 * (0.25 + link_busy))
    per_byte = (0.125 + 0.25) * 8e-6
    assert energy.radio_j == pytest.approx(110 * per_byte + 0.5 * link_busy)
    assert energy.total_j == pytest.approx(energy.compute_j + energy.idle_j + energy.radio_j)
    assert terms.total == pytest.approx(1.0 + 0.25 + link_busy)
    everything = step_energy(profile, profile.names, model)
    assert everything.sent_bytes == 0 and everything.radio_j == 0 and everything.idle_j == 0
    assert everything.compute_j == pytest.approx(4.0 * 3.0)


def test_server_side_outputs_cross_both_ways():
    profile = chain_profile([1.0, 1.0], [0.1, 0.1], [100, 30], Link(1e3, 1e3), input_bytes=7)
    assert crossing_bytes(profile, ["x"]) == 7 + 30  # the input goes up; the output comes down


def test_time_and_energy_pick_different_cuts_when_the_radio_is_dear():
    # A fast device next to a far faster server: time says offload, a costly radio says keep it local.
    profile = chain_profile([0.01, 0.01], [1e-4, 1e-4], [10_000, 10], Link(1e7, 1e7, 1e-3), input_bytes=10_000)
    dear = EnergyModel(1.0, 0.5, Radio("dear", "dear radio", 50.0, 50.0, 2.0, "test"))
    assert plan(profile).server  # time: offload
    assert not plan(energy_profile(profile, dear)).server  # energy: everything on the device


def test_unknown_idle_power_charges_waiting_nothing():
    nano = EnergyModel.for_device("nano")
    assert nano.device == "jetson-nano" and nano.active_w == preset("jetson-nano").active_w
    assert nano.idle_w == 0.0 and nano.idle_known is False
    pi = EnergyModel.for_device("raspberry-pi-4", "lte")
    assert pi.idle_known and pi.idle_w == preset("raspberry-pi-4").idle_w and pi.radio.key == "lte"
    with pytest.raises(KeyError, match="is a server preset, not a device"):
        EnergyModel.for_device("t4")
    with pytest.raises(ValueError, match="active_w"):
        EnergyModel(-1.0, 0.0, RADIOS["wifi"])


@pytest.mark.parametrize("seed", range(20))
def test_the_planner_s_energy_objective_equals_brute_force(seed):
    profile = random_dag(100 + seed, n_ops=random.Random(seed).randint(1, 9))
    model = MODELS[seed % len(MODELS)]
    best = min(step_energy(profile, device, model).total_j for device in feasible_placements(profile))
    for method in ("blockwise", "full", "exhaustive"):
        planned = plan(profile, method, objective="energy", energy=model)
        assert planned.objective == "energy" and planned.method == method
        assert step_energy(profile, planned.device, model).total_j == pytest.approx(best, rel=TOL, abs=1e-12)
        # The plan reports the placement's step time, whatever it minimised.
        assert planned.predicted_step_s == pytest.approx(step_time(profile, planned.device).total)


def test_energy_objective_honours_pins_and_refuses_unknown_objectives():
    profile = chain_profile([1.0, 1.0, 1.0], [0.1, 0.1, 0.1], [10, 10, 10], Link(1e3, 1e3), input_bytes=10)
    planned = plan(profile, objective="energy", energy=MODELS[0], pin_device=["n1"])
    assert "n1" in planned.device
    with pytest.raises(PlanningError, match="unknown objective 'speed'"):
        plan(profile, objective="speed")


def test_resources_of_a_placement_and_the_baselines_energy():
    profile = chain_profile([1.0, 2.0], [0.5, 0.25], [100, 10], Link(1000.0, 500.0, 0.01), input_bytes=400)
    profile.extra["device"] = "raspberry-pi-4"
    found = resources(profile, ["x", "n0"])
    assert found.model.device == "raspberry-pi-4" and not found.model.assumed
    assert found.energy == step_energy(profile, ["x", "n0"], EnergyModel.for_device("raspberry-pi-4"))
    assert found.capacity_bytes == preset("raspberry-pi-4").memory_bytes and found.fits is True
    data = found.to_json()
    assert data["memory"]["total_bytes"] == found.memory.total and data["energy"]["total_j"] == found.energy.total_j
    assert data["energy"]["device"] == "raspberry-pi-4" and data["energy"]["radio"] == "wifi"
    energies = baseline_energies(profile)
    assert energies["device_only"] == pytest.approx(step_energy(profile, profile.names, found.model).total_j)
    assert energies["server_only"] == pytest.approx(step_energy(profile, ["x"], found.model).total_j)
    unnamed = resources(chain_profile([1.0], [1.0], [1], Link(1.0, 1.0)), ["x"])
    assert unnamed.model.device == "jetson-nano" and unnamed.model.assumed and unnamed.fits is None
