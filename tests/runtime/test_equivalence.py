"""Split training must give the same parameters as local training (float32, same seed)."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from lightning_split import SplitStrategy
from tests.helpers import ServeProcess, assert_same_parameters, fit_pair, trainer
from tests.models import DagNet, WritesCutInPlace, loader

CASES = {
    "sgd_momentum": ({"optimizer": "sgd", "momentum": 0.9}, {}),
    "adam_steplr": ({"optimizer": "adam", "lr": 0.01, "scheduler": True}, {}),
    "accumulate_2": ({"optimizer": "sgd"}, {"accumulate_grad_batches": 2}),
    "clip_norm": ({"optimizer": "sgd"}, {"gradient_clip_val": 0.3, "gradient_clip_algorithm": "norm"}),
    "clip_value": ({"optimizer": "sgd"}, {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"}),
    "manual": ({"optimizer": "adam", "lr": 0.01, "manual": True, "manual_clip": 0.3, "scheduler": True}, {}),
    "dropout_in_suffix": ({"optimizer": "sgd", "dropout": 0.3}, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_embedded_server_equals_local(case):
    model_kwargs, trainer_kwargs = CASES[case]
    local, split, strategy = fit_pair(model_kwargs, trainer_kwargs, server=None)
    assert strategy.plan is not None and set(strategy.plan.spec.cut) == {"add", "b"}
    assert_same_parameters(local, split)


@pytest.mark.parametrize("case", ["sgd_momentum", "adam_steplr", "clip_norm", "manual", "dropout_in_suffix"])
def test_server_process_equals_local(case, dagnet_server):
    model_kwargs, trainer_kwargs = CASES[case]
    local, split, _ = fit_pair(model_kwargs, trainer_kwargs, server=dagnet_server.url)
    assert_same_parameters(local, split)


def test_clipping_really_clips():
    """Guard for the clip cases: with this threshold, clipping changes the result."""
    torch.manual_seed(0)
    clipped, plain = DagNet(), None
    plain = copy.deepcopy(clipped)
    trainer(gradient_clip_val=0.3).fit(clipped, loader())
    trainer().fit(plain, loader())
    assert not torch.allclose(clipped.head.weight, plain.head.weight, atol=1e-4)


def test_eval_outputs_equal_local():
    torch.manual_seed(0)
    local = DagNet()
    split = copy.deepcopy(local)
    strategy = SplitStrategy(cut="b")
    local_preds = trainer().predict(local, loader(96))
    split_preds = trainer(strategy).predict(split, loader(96))
    for a, b in zip(local_preds, split_preds):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    local_val = trainer().validate(local, loader(96), verbose=False)
    split_val = trainer(SplitStrategy(cut="b")).validate(split, loader(96), verbose=False)
    assert local_val[0]["val_loss"] == pytest.approx(split_val[0]["val_loss"], abs=1e-6)
    local_test = trainer().test(local, loader(96), verbose=False)
    split_test = trainer(SplitStrategy(cut="b")).test(split, loader(96), verbose=False)
    assert local_test == split_test


def test_tied_weights_stay_on_one_side_and_train_equal():
    from lightning_split.graph.programs import SplitError
    from tests.models import TiedNet

    torch.manual_seed(0)
    local = TiedNet()
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer().fit(local, loader())
    # Estimated costs over a given slow link: the device would keep everything up to l2, but l2 is
    # pinned to the server and shares its weight with l1, so l1 must go too: the cut is before l1.
    strategy = SplitStrategy(pin_server=["l2"], costs="estimate", plan_link="1mbit,50ms")
    torch.manual_seed(1)
    trainer(strategy).fit(split, loader())
    assert strategy.plan.spec.cut == ("inp",)
    assert strategy.plan.spec.server_nodes == ("relu", "l1", "relu_1", "l2", "relu_2", "head")
    assert_same_parameters(local, split)
    assert split.l1.weight is split.l2.weight
    with pytest.raises(SplitError, match="tied tensor"):
        trainer(SplitStrategy(cut="l1"), max_steps=1).fit(copy.deepcopy(local), loader(64))


def test_two_optimizers_manual_equal_local():
    from tests.models import TwoOptimizerNet

    torch.manual_seed(0)
    local = TwoOptimizerNet()
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer().fit(local, loader())
    torch.manual_seed(1)
    trainer(SplitStrategy(cut="b")).fit(split, loader())
    assert_same_parameters(local, split)


def test_device_keeps_only_the_prefix_during_training():
    seen = {}

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen["head"] = module.head.weight.numel()
            seen["mix"] = module.mix.weight.numel()
            seen["stem"] = module.stem[0].weight.numel()

    torch.manual_seed(0)
    model = DagNet()
    trainer(SplitStrategy(cut="b"), max_steps=2, callbacks=[Probe()]).fit(model, loader(64))
    assert seen == {"head": 0, "mix": 0, "stem": 8 * 1 * 3 * 3}
    assert model.head.weight.shape == (10, 512), "the server's weights come back at the end of fit"


@pytest.mark.parametrize("micro_batches", [1, 4])
@pytest.mark.parametrize("where", ["embedded", "serve"])
def test_a_cut_value_written_in_place_on_the_device_reaches_the_server_as_it_was(where, micro_batches):
    torch.manual_seed(0)
    local = WritesCutInPlace()
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer(max_steps=8).fit(local, loader())
    server = ServeProcess("--model", "tests.models:WritesCutInPlace") if where == "serve" else None
    try:
        strategy = SplitStrategy(server=server.url if server else None, cut="add_", micro_batches=micro_batches)
        torch.manual_seed(1)
        trainer(strategy, max_steps=8).fit(split, loader())
    finally:
        if server is not None:
            server.stop()
    assert strategy.plan.spec.cut == ("l1", "add_") and "mul" in strategy.plan.spec.server_nodes
    assert_same_parameters(local, split)
