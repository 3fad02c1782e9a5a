"""The model zoo: models nobody here wrote, cut mid-network, trained against a ``serve`` process, equal to local.

Tiny configurations of Hugging Face GPT-2 and BERT (captured with torch.export), a timm ViT
and efficientnet_b0 (torch.fx) and Lightning's demo Transformer (torch.export, its decoder
kept whole), each cut at a named block and trained three steps split and locally from the
same seeds: the parameters agree within 1e-5 and ``forward`` returns the same type (a
``ModelOutput`` stays one, so ``out.loss`` works split). efficientnet_b0 also checks that
only the cut tensor crosses: shape reads and buffer updates of the device's activations
stay on the device.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from lightning_split import SplitStrategy
from tests import zoo_models
from tests.helpers import MemoryLogger, ServeProcess, assert_same_parameters, trainer

pytestmark = pytest.mark.slow

STEPS = 3


@dataclass(frozen=True)
class Case:
    cls: str
    cut: str
    data: Callable[[], Any]
    init: dict[str, Any] = field(default_factory=dict)
    capture: str = "export"
    # A transformer's attention mask is built from its input without parameters, so it counts as
    # raw input (SPEC 1c) and every mid-network cut sends it: these cuts need private_inputs=False.
    private_inputs: bool = True


CASES = {
    "gpt2": Case("Gpt2Zoo", "model.transformer.h.0", lambda: zoo_models.single_tokens(STEPS), private_inputs=False),
    "bert": Case(
        "BertZoo", "model.bert.encoder.layer.0", lambda: zoo_models.tokens(STEPS, labels=3), private_inputs=False
    ),
    "vit": Case(
        "TimmZoo",
        "net.blocks.0",
        lambda: zoo_models.images(STEPS),
        {"name": "vit_tiny_patch16_224", "options": zoo_models.VIT_OPTIONS},
        "fx",
    ),
    "efficientnet_b0": Case("TimmZoo", "net.blocks.3", lambda: zoo_models.images(STEPS), {}, "fx"),
    "demo_transformer": Case("DemoTransformerZoo", "model.embedding", lambda: zoo_models.tokens(STEPS)),
}


def _fit_pair(case: Case, url: str) -> tuple[Any, Any, SplitStrategy, MemoryLogger]:
    torch.manual_seed(0)
    local = getattr(zoo_models, case.cls)(**case.init)
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer(max_steps=STEPS).fit(local, case.data())
    strategy, logger = SplitStrategy(server=url, cut=case.cut, private_inputs=case.private_inputs), MemoryLogger()
    torch.manual_seed(1)
    trainer(strategy, max_steps=STEPS, logger=logger, log_every_n_steps=1).fit(split, case.data())
    return local, split, strategy, logger


@pytest.mark.parametrize("name", list(CASES))
def test_zoo_model_trains_split_equal_to_local(name):
    case = CASES[name]
    server = ServeProcess("--model", f"tests.zoo_models:{case.cls}", env={"HF_HUB_OFFLINE": "1"})
    try:
        local, split, strategy, logger = _fit_pair(case, server.url)
    finally:
        server.stop()
    assert strategy.plan is not None and strategy.plan.spec.server_nodes
    assert strategy.plan.traced.method == case.capture
    assert_same_parameters(local, split, atol=1e-5)
    assert split.output_types == local.output_types and len(local.output_types) == STEPS
    if name == "efficientnet_b0":
        cut_bytes = strategy.plan.summary()["split/cut_bytes"]
        assert cut_bytes == 8 * 80 * 2 * 2 * 4  # the blocks.3 activation alone
        logged = [metrics for _, metrics in logger.metrics if "split/bytes_up" in metrics]
        per_step = [metrics["split/bytes_up"] for metrics in logged]
        # the first forward also carries the device's random state (5 KB), which later ones only refer to
        random_state = torch.get_rng_state().numel()
        assert len(per_step) == STEPS and per_step[0] <= 1.5 * cut_bytes + random_state, per_step
        assert max(per_step[1:]) <= 1.5 * cut_bytes, per_step
        assert logged[0]["split/setup_bytes_up"] > 4_000_000 * 4 * 0.5  # the weights went up once, apart
