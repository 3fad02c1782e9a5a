"""Micro-batched split training equals local training for per-sample models, and refuses the others."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_split import SplitStrategy
from tests.helpers import assert_same_parameters, trainer
from tests.models import DagNet, PerSampleNet, loader

CASES = {
    "sgd_momentum": ({"optimizer": "sgd", "momentum": 0.9}, {}),
    "adam_steplr": ({"optimizer": "adam", "lr": 0.01, "scheduler": True}, {}),
    "accumulate_2": ({"optimizer": "sgd"}, {"accumulate_grad_batches": 2}),
    "clip_norm": ({"optimizer": "sgd"}, {"gradient_clip_val": 0.3, "gradient_clip_algorithm": "norm"}),
    "clip_value": ({"optimizer": "sgd"}, {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"}),
    "adam_clip_norm": ({"optimizer": "adam", "lr": 0.01}, {"gradient_clip_val": 0.3}),
    "manual": ({"optimizer": "adam", "lr": 0.01, "manual": True, "manual_clip": 0.3, "scheduler": True}, {}),
}


def fit_micro(model_kwargs, trainer_kwargs, server=None, micro_batches=4, data=None, model_cls=PerSampleNet, **options):
    """Train a model locally and a copy split at ``b`` with ``micro_batches``, from the same seeds."""
    torch.manual_seed(0)
    local = model_cls(**model_kwargs)
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer(**trainer_kwargs).fit(local, data or loader())
    strategy = SplitStrategy(server=server, cut="b", micro_batches=micro_batches, **options)
    torch.manual_seed(1)
    trainer(strategy, **trainer_kwargs).fit(split, data or loader())
    return local, split, strategy


@pytest.mark.parametrize("case", list(CASES))
def test_micro_batches_on_the_embedded_server_equal_local(case):
    model_kwargs, trainer_kwargs = CASES[case]
    local, split, strategy = fit_micro(model_kwargs, trainer_kwargs)
    assert strategy.micro_batches == 4
    assert strategy.runtime is None  # closed at the end of fit
    assert_same_parameters(local, split)


@pytest.mark.parametrize("case", ["sgd_momentum", "adam_steplr", "adam_clip_norm", "clip_value", "manual"])
def test_micro_batches_on_a_serve_process_equal_local(case, persample_server):
    model_kwargs, trainer_kwargs = CASES[case]
    local, split, _ = fit_micro(model_kwargs, trainer_kwargs, server=persample_server.url)
    assert_same_parameters(local, split)


def test_unequal_micro_batches_and_a_short_last_batch_equal_local():
    """32 samples in 3 micro-batches (11, 11, 10), and a last batch of 4 samples cut into 4 of one."""
    local, split, _ = fit_micro(
        {"optimizer": "sgd"}, {"max_epochs": 2, "max_steps": -1}, micro_batches=3, data=loader(100)
    )
    assert_same_parameters(local, split)
    local, split, _ = fit_micro(
        {"optimizer": "sgd"}, {"max_epochs": 1, "max_steps": -1}, micro_batches=16, data=loader(100)
    )
    assert_same_parameters(local, split)


def test_micro_batched_predictions_equal_local():
    torch.manual_seed(0)
    local = PerSampleNet()
    split = copy.deepcopy(local)
    local_preds = trainer().predict(local, loader(96))
    split_preds = trainer(SplitStrategy(cut="b", micro_batches=4)).predict(split, loader(96))
    for a, b in zip(local_preds, split_preds):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_batchnorm_is_refused_before_the_first_step():
    torch.manual_seed(0)
    model = DagNet()
    before = copy.deepcopy(model.state_dict())
    strategy = SplitStrategy(cut="b", micro_batches=4)
    with pytest.raises(ValueError) as caught:
        trainer(strategy, max_steps=2).fit(model, loader(64))
    message = str(caught.value)
    assert "stem.1 (BatchNorm2d)" in message
    for fix in ("micro_batches=1", "GroupNorm", "LayerNorm", "micro_batch_statistics=True"):
        assert fix in message
    assert strategy.runtime is None
    for key, value in before.items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0, msg=key)


def test_dropout_in_training_is_refused_and_p0_is_not():
    with pytest.raises(ValueError, match=r"drop \(Dropout\)"):
        trainer(SplitStrategy(cut="b", micro_batches=2), max_steps=1).fit(PerSampleNet(dropout=0.3), loader(64))
    trainer(SplitStrategy(cut="b", micro_batches=2), max_steps=1).fit(PerSampleNet(dropout=0.0), loader(64))


def test_per_micro_batch_statistics_are_an_explicit_opt_in():
    torch.manual_seed(0)
    model = DagNet()
    strategy = SplitStrategy(cut="b", micro_batches=4, micro_batch_statistics=True)
    trainer(strategy, max_steps=3).fit(model, loader(128))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_auto_is_never_above_one_for_a_model_that_is_not_per_sample():
    strategy = SplitStrategy(cut="b", micro_batches="auto", costs="estimate", plan_link="10mbit,5ms")
    trainer(strategy, max_steps=2).fit(DagNet(), loader(64))
    assert strategy.micro_batches == 1


@pytest.mark.parametrize("value", [0, 17, 2.5, "many", True])
def test_bad_micro_batches_are_refused_at_construction(value):
    with pytest.raises(ValueError, match="micro_batches"):
        SplitStrategy(micro_batches=value)


def test_auto_picks_the_cost_models_micro_batches_for_a_per_sample_model_and_equals_local():
    """Over a slow planned link the link dominates, so the cost model pipelines; training stays exact."""
    options = {"costs": "estimate", "plan_link": "2mbit,1ms"}
    local, split, strategy = fit_micro({"optimizer": "sgd", "momentum": 0.9}, {}, micro_batches="auto", **options)
    chosen = strategy.plan.notes["micro_batches"]
    assert strategy.micro_batches == chosen > 1
    assert_same_parameters(local, split)


def test_batchnorm_is_refused_by_name_against_a_serve_process(dagnet_server):
    strategy = SplitStrategy(server=dagnet_server.url, cut="b", micro_batches=2)
    with pytest.raises(ValueError, match=r"BatchNorm2d"):
        trainer(strategy, max_steps=1).fit(DagNet(), loader(64))


def test_micro_batches_under_mixed_precision_are_refused_by_name():
    strategy = SplitStrategy(cut="b", micro_batches=2)
    with pytest.raises(ValueError, match="mixed precision"):
        trainer(strategy, max_steps=1, precision="bf16-mixed").fit(PerSampleNet(), loader(64))


def test_micro_batches_and_a_codec_combine():
    """M=4 with ``codec="none"`` stays exact; with fp16 every micro-batch's tensors cross at half the bytes."""
    torch.manual_seed(0)
    local = PerSampleNet()
    exact, halved = copy.deepcopy(local), copy.deepcopy(local)
    torch.manual_seed(1)
    trainer().fit(local, loader())
    traffic = {}
    for codec, model in (("none", exact), ("fp16", halved)):
        strategy = SplitStrategy(cut="b", micro_batches=4, codec=codec)
        torch.manual_seed(1)
        trainer(strategy).fit(model, loader())
        traffic[codec] = strategy.last_traffic["split/bytes_up"]
    assert_same_parameters(local, exact)
    assert traffic["none"] / traffic["fp16"] > 1.8


def test_measured_costs_time_each_micro_batch_and_auto_plans_for_the_pipelined_step():
    """``cut="auto"`` with ``costs="measure"`` and ``micro_batches=4``: both sides also time each node's forward
    and its cost on a quarter of the batch, the profile carries what every micro-batch pays again, the placement
    is the T_4 optimum of that profile, and training equals local."""
    from lightning_split.planning.pipelined import pipelined_step_time
    from lightning_split.planning.pipelined_planner import plan_pipelined

    torch.manual_seed(0)
    local = PerSampleNet(optimizer="sgd", momentum=0.9)
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer().fit(local, loader())
    strategy = SplitStrategy(cut="auto", micro_batches=4, costs="measure", costs_options={"cache": False})
    torch.manual_seed(1)
    trainer(strategy).fit(split, loader())
    placement = strategy.plan
    profile = placement.profile
    assert profile.extra["device_micro_batches"] == profile.extra["server_micro_batches"] == 4
    assert profile.extra["device_micro_samples"] == profile.extra["server_micro_samples"] == 8
    for node in profile.nodes:
        if node.kind == "op":
            assert None not in (node.device_fwd_s, node.server_fwd_s, node.device_fixed_s, node.server_fixed_s)
            assert node.device_fixed_s <= node.device_s and node.server_fixed_s <= node.server_s
    device = [name for name in profile.names if name not in set(placement.spec.server_nodes)]
    predicted = pipelined_step_time(profile, device, 4).total
    assert placement.plan.predicted_step_s == pytest.approx(predicted, rel=1e-9)
    assert predicted == pytest.approx(plan_pipelined(profile, 4).predicted_step_s, rel=1e-9), "the T_4 optimum"
    assert_same_parameters(local, split)
