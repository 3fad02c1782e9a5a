"""What a federated client reports: `split/round` and the round's loss to the Lightning loggers."""

from __future__ import annotations

import pytest
import torch

from lightning_split import Federation, SplitStrategy
from tests.helpers import MemoryLogger, assert_same_parameters, trainer
from tests.models import DagNet, loader


def test_each_round_logs_its_number_and_average_loss_and_a_lone_client_trains_as_locally(dagnet_server):
    torch.manual_seed(0)
    local, split = DagNet(), DagNet()
    split.load_state_dict(local.state_dict())
    trainer(max_steps=5).fit(local, loader(160))
    logger = MemoryLogger()
    federation = Federation(group="solo", clients=1, client=0, mode="splitfed", round_steps=2)
    strategy = SplitStrategy(server=dagnet_server.url, cut="stem", federation=federation)
    trainer(strategy, max_steps=5, logger=logger, log_every_n_steps=1).fit(split, loader(160))
    rounds = [metrics for _, metrics in logger.metrics if "split/round" in metrics]
    assert [m["split/round"] for m in rounds] == [1.0, 2.0, 3.0]  # after steps 2 and 4, and at the end (step 5)
    losses = [m["train_loss"] for _, m in logger.metrics if "train_loss" in m]
    assert abs(rounds[0]["split/round_loss"] - sum(losses[:2]) / 2) < 1e-6  # the round's average training loss
    assert abs(rounds[2]["split/round_loss"] - losses[4]) < 1e-6  # the last round is the one step cut short
    assert_same_parameters(local, split)  # the average of one client is that client's model


def test_federation_arguments_are_checked_with_messages_that_say_the_fix():
    with pytest.raises(ValueError, match="key"):
        Federation(group="g", clients=2, client=0, mode="sequential")
    with pytest.raises(ValueError, match=r"client.*0 to clients - 1"):
        Federation(group="g", clients=2, client=2, mode="splitfed")
    with pytest.raises(ValueError, match="mode"):
        Federation(group="g", clients=2, client=0, mode="async")
    with pytest.raises(ValueError, match="replan_every"):
        alone = Federation(group="g", clients=1, client=0, mode="splitfed")
        SplitStrategy(cut="auto", replan_every=5, federation=alone)
