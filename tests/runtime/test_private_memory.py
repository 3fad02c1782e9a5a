"""Private inputs and a device memory budget with SplitStrategy, against a real ``serve`` process.

The digits MLP (flatten, ``l1``, ReLU, ``head``): the input ``x`` and its flatten are raw (no
parameter on them or before them), so with private inputs (the default) neither may cross.
"""

from __future__ import annotations

import pytest
import torch

from lightning_split import SplitStrategy
from lightning_split.graph.programs import SplitError
from lightning_split.planning.constraints import device_footprint, private_input_violations
from lightning_split.planning.costmodel import PlanningError
from tests.helpers import ServeProcess, trainer
from tests.models import DigitsMLP, loader

FAST = "10gbit,0.1ms"  # the server is far faster: unconstrained, the planner sends the input itself
SLOW = "1mbit,50ms"  # the device keeps everything unless a budget forbids it
ESTIMATE = {"device_gflops": 1.0, "server_gflops": 10000.0}


@pytest.fixture(scope="module")
def mlp_server():
    server = ServeProcess("--model", "tests.models:DigitsMLP")
    yield server
    server.stop()


def _fit(url: str, steps: int = 2, **options) -> tuple[DigitsMLP, SplitStrategy]:
    torch.manual_seed(0)
    model = DigitsMLP()
    strategy = SplitStrategy(server=url, costs="estimate", costs_options=ESTIMATE, **options)
    trainer(strategy, max_steps=steps).fit(model, loader(128))
    return model, strategy


@pytest.mark.parametrize("cut", ["x", "flatten"])
def test_a_cut_that_sends_a_raw_input_is_refused_before_the_first_step(mlp_server, cut):
    torch.manual_seed(0)
    model = DigitsMLP()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(SplitError, match=rf"raw input tensor '{cut}'.*private_inputs=False"):
        trainer(SplitStrategy(server=mlp_server.url, cut=cut)).fit(model, loader(64))
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())  # no step ran


def test_private_inputs_false_lets_a_raw_cut_train(mlp_server):
    _, strategy = _fit(mlp_server.url, cut="flatten", private_inputs=False)
    assert list(strategy.plan.spec.cut) == ["flatten"]


def test_auto_keeps_the_raw_input_on_the_device_and_the_log_says_so(mlp_server):
    _, free = _fit(mlp_server.url, plan_link=FAST, private_inputs=False)
    assert private_input_violations(free.plan.profile, _device(free))  # unconstrained, the raw input would cross
    _, private = _fit(mlp_server.url, plan_link=FAST)
    assert not private_input_violations(private.plan.profile, _device(private))
    assert private.plan.spec.server_nodes  # it still splits
    assert "No raw input crosses to the server" in private.plan.describe()


def test_the_memory_budget_is_respected_and_a_budget_too_small_names_the_smallest_footprint(mlp_server):
    _, unbounded = _fit(mlp_server.url, plan_link=SLOW, device_memory="1GB")  # a budget measures the footprints
    assert not unbounded.plan.spec.server_nodes  # on this link the device keeps everything...
    profile = unbounded.plan.profile
    everything = device_footprint(profile, profile.names)
    smallest = unbounded.options.smallest_footprint(profile)
    budget = (smallest + everything) // 2
    _, bounded = _fit(mlp_server.url, plan_link=SLOW, device_memory=budget)
    assert bounded.plan.spec.server_nodes  # ...but not within the budget
    assert device_footprint(bounded.plan.profile, _device(bounded)) <= budget
    with pytest.raises(PlanningError, match=f"smallest device footprint of a feasible placement is {smallest} bytes"):
        _fit(mlp_server.url, plan_link=SLOW, device_memory=smallest - 1)


def test_a_user_cut_over_the_budget_is_refused(mlp_server):
    with pytest.raises(SplitError, match="more than device_memory=1000 bytes; the smallest device footprint"):
        _fit(mlp_server.url, cut="l1", device_memory="1KB")


def _device(strategy: SplitStrategy) -> list[str]:
    server = set(strategy.plan.spec.server_nodes)
    return [name for name in strategy.plan.profile.names if name not in server]


def test_footprints_with_a_budget_are_measured_and_the_measurement_leaves_training_as_it_was():
    from lightning_split.costs.memory import measured_saved_bytes
    from lightning_split.graph.capture import trace_module
    from tests.models import DagNet, digits

    torch.manual_seed(0)
    model = DagNet(dropout=0.5)
    images = digits(32).tensors[0]
    traced = trace_module(model, (images,), {})
    state = {key: value.clone() for key, value in model.state_dict().items()}
    rng = torch.get_rng_state()
    saved = measured_saved_bytes(traced, (images,), {})
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())  # BatchNorm stats too
    assert saved["x"] == 0 and saved["stem_0"] == images.numel() * 4  # the conv saves its input, not the weight
    assert saved["stem_2"] == 32 * 8 * 8 * 8 * 4  # ReLU saves its output


def test_with_a_budget_the_profile_records_measured_device_mem_bytes(mlp_server):
    _, strategy = _fit(mlp_server.url, plan_link=SLOW, device_memory="1GB")
    profile = strategy.plan.profile
    assert profile.extra["device_mem_source"] == "measured saved tensors"
    l1 = next(node for node in profile.nodes if node.name == "l1")
    params = (64 * 256 + 256) * 4
    assert l1.device_mem_bytes == params * (2 + 2) + 32 * 64 * 4  # Adam: 2 slots; l1 saves its (batch 32) input
