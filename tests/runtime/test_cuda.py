"""The server's half on a CUDA GPU (runs where one is present; CI machines have none)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import ServeProcess, assert_same_parameters, fit_pair

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for the server")


@pytest.mark.parametrize("case", ["sgd_momentum", "sgd_clip_steplr"])
def test_server_on_cuda_trains_like_local_cpu_training(case):
    model_kwargs, trainer_kwargs = {
        "sgd_momentum": ({"optimizer": "sgd", "momentum": 0.9}, {}),
        "sgd_clip_steplr": ({"optimizer": "sgd", "scheduler": True}, {"gradient_clip_val": 0.3}),
    }[case]
    server = ServeProcess("--model", "tests.models:DagNet", "--device", "cuda")
    try:
        local, split, strategy = fit_pair(model_kwargs, trainer_kwargs, server=server.url)
    finally:
        server.stop()
    assert strategy.plan is not None and set(strategy.plan.spec.cut) == {"add", "b"}
    worst = max((split.state_dict()[k] - v).abs().max().item() for k, v in local.state_dict().items() if v.numel())
    print(f"{case}: largest parameter difference, CUDA server vs CPU: {worst:.2e}")
    # float32 on another device: equal up to the rounding of different kernels, not bit-equal.
    # (Adam is left out: it turns rounding noise on a gradient that is exactly 0 in exact
    # arithmetic, such as a conv bias before BatchNorm, into steps of +-lr.)
    assert_same_parameters(local, split, atol=1e-5)
