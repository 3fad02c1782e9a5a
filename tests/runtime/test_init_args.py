"""A module built with non-default arguments and no ``save_hyperparameters()`` (the demo LightningTransformer)."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch.demos import LightningTransformer

from lightning_split import SplitStrategy
from lightning_split.graph.describe import ModelDescription
from lightning_split.graph.programs import used_state
from lightning_split.runtime.placement import place_model
from lightning_split.serve.host import ModelHost
from lightning_split.transport import messages
from lightning_split.transport.protocol import SessionError
from tests.helpers import assert_same_parameters, trainer
from tests.zoo_models import tokens

pytestmark = pytest.mark.slow


class OfflineTransformer(LightningTransformer):
    """The demo module as it is, less its ``prepare_data`` (which downloads WikiText-2)."""

    def prepare_data(self) -> None:
        pass


def test_embedded_server_takes_the_module_as_it_is():
    torch.manual_seed(0)
    local = OfflineTransformer(vocab_size=100)  # not the default 33278, and no hparams
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer(max_steps=2).fit(local, tokens(2))
    strategy = SplitStrategy(cut="model.embedding")
    torch.manual_seed(1)
    trainer(strategy, max_steps=2).fit(split, tokens(2))
    assert strategy.plan is not None and strategy.plan.spec.server_nodes
    assert_same_parameters(local, split)


def test_a_remote_server_names_init_args_and_save_hyperparameters():
    torch.manual_seed(0)
    model = LightningTransformer(vocab_size=100)
    ids = torch.randint(0, 100, (4, 8))
    plan = place_model(model, (ids, ids), {}, cut="model.embedding")
    description = ModelDescription.of("demo:LightningTransformer", {}, plan.traced, plan.example)
    hello = messages.Hello(
        **description.to_wire(),
        spec=plan.spec.to_json(),
        optimizers=[],
        state={key: t.detach() for key, t in used_state(plan.graph_module, plan.spec.server_nodes).items()},
    )
    host = ModelHost(lambda init: LightningTransformer(**dict(init)), "demo:LightningTransformer")  # as `serve` does
    with pytest.raises(SessionError, match=r"init_args=\{\}.*save_hyperparameters\(\).*SplitStrategy\(init_args="):
        host.open(hello)
