"""Mixed precision across the cut: the server runs its part under the device's autocast.

``precision="bf16-mixed"`` wraps the training step in ``torch.autocast``; the split must compute
what the unsplit module computes under it, so the server opens the same autocast region. The
checks compare against local training with the same precision, and also against float32, so a
server that silently trained in float32 would fail them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_split import SplitStrategy
from lightning_split.transport import messages
from lightning_split.transport.errors import ProtocolError
from tests import zoo_models
from tests.helpers import ServeProcess, assert_same_parameters, trainer
from tests.models import DagNet, loader


def _train(
    precision: str, strategy: SplitStrategy | None = None, trainer_kwargs: dict | None = None, **kwargs
) -> DagNet:
    torch.manual_seed(0)
    model = DagNet(**kwargs)
    torch.manual_seed(1)
    trainer(strategy, precision=precision, **(trainer_kwargs or {})).fit(model, loader())
    return model


def _largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.state_dict().values(), b.state_dict().values())
    return max((x - y).abs().max().item() for x, y in pairs if x.is_floating_point())


@pytest.mark.parametrize("cut", ["b", "x"], ids=["mid_cut", "server_only"])
def test_bf16_mixed_split_equals_local_bf16_mixed(cut, dagnet_server):
    local = _train("bf16-mixed")
    split = _train("bf16-mixed", SplitStrategy(server=dagnet_server.url, cut=cut, private_inputs=cut != "x"))
    assert_same_parameters(local, split, atol=1e-3)
    assert _largest_difference(split, _train("32-true")) > 1e-3  # bf16 really ran on both sides


def test_bf16_mixed_adam_with_clipping_embedded_equals_local():
    clip = {"gradient_clip_val": 0.3, "gradient_clip_algorithm": "norm"}
    local = _train("bf16-mixed", None, clip, optimizer="adam", lr=0.01)
    split = _train("bf16-mixed", SplitStrategy(cut="b"), clip, optimizer="adam", lr=0.01)
    assert_same_parameters(local, split, atol=1e-3)


@pytest.mark.slow
def test_gpt2_bf16_mixed_cut_mid_network_equals_local():
    data = lambda: zoo_models.single_tokens(3)  # noqa: E731
    torch.manual_seed(0)
    local = zoo_models.Gpt2Zoo()
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer(max_steps=3, precision="bf16-mixed").fit(local, data())
    server = ServeProcess("--model", "tests.zoo_models:Gpt2Zoo", env={"HF_HUB_OFFLINE": "1"})
    try:
        torch.manual_seed(1)
        # the attention mask, built from the input without parameters, crosses (tests/runtime/test_zoo.py)
        strategy = SplitStrategy(server=server.url, cut="model.transformer.h.0", private_inputs=False)
        trainer(strategy, max_steps=3, precision="bf16-mixed").fit(split, data())
    finally:
        server.stop()
    assert strategy.plan is not None and strategy.plan.spec.server_nodes
    assert_same_parameters(local, split, atol=1e-3)
    assert split.output_types == local.output_types


@pytest.mark.parametrize("init_scale", [2.0**8, 2.0**24], ids=["finite", "overflowing_first_steps"])
def test_fp16_with_a_gradient_scaler_split_equals_local(init_scale, dagnet_server):
    """16-mixed with a GradScaler (as on a GPU; here on the CPU): the server's gradients are unscaled too.

    A huge initial scale overflows the first steps: both sides must skip them and the scale fall
    as unsplit, or the server would step on infinite gradients; the later steps then train with
    a scale the server must divide out.
    """

    def fit(strategy: SplitStrategy | None) -> tuple[DagNet, float]:
        torch.manual_seed(0)
        model = DagNet()
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        plugin = MixedPrecision("16-mixed", device="cpu", scaler=scaler)
        torch.manual_seed(1)
        trainer(strategy, plugins=[plugin]).fit(model, loader())
        return model, scaler.get_scale()

    torch.manual_seed(0)
    initial = DagNet().head.weight.detach().clone()
    local, local_scale = fit(None)
    split, split_scale = fit(SplitStrategy(server=dagnet_server.url, cut="b"))
    assert split_scale == local_scale
    assert not torch.equal(local.head.weight, initial)  # the server's head trained
    if init_scale > 2.0**16:
        assert local_scale < init_scale  # steps were skipped: the case is the one it names
    assert all(torch.isfinite(value).all() for value in split.state_dict().values() if value.is_floating_point())
    assert_same_parameters(local, split, atol=1e-3)


def test_forward_refuses_an_unknown_autocast_dtype():
    with pytest.raises(ProtocolError, match="autocast"):
        messages.Forward(id=1, values=[], requires_grad=[], training=True, grad=True, rng=None, autocast="float64")
    wire = messages.Forward(id=1, values=[], requires_grad=[], training=True, grad=True, rng=None).to_wire()
    assert "autocast" not in wire  # a float32 forward looks as it did before the field existed
