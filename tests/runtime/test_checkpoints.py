"""Checkpoints of split runs are plain Lightning checkpoints of the unsplit module, and back."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_split
from lightning_split import SplitStrategy
from lightning_split.transport.protocol import RemoteError
from tests.helpers import assert_same_parameters, trainer
from tests.models import DagNet, loader


def test_split_checkpoint_loads_into_plain_module(tmp_path):
    torch.manual_seed(0)
    model = DagNet(optimizer="adam", lr=0.01)
    fit = trainer(SplitStrategy(cut="b"), max_steps=10)
    fit.fit(model, loader())
    path = tmp_path / "split.ckpt"
    fit.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["state_dict"].keys() == DagNet().state_dict().keys()
    adam_state = checkpoint["optimizer_states"][0]["state"]
    assert len(adam_state) == len(list(model.parameters())), "optimizer state must cover both sides"
    plain = DagNet.load_from_checkpoint(path)
    x = torch.randn(5, 1, 8, 8)
    plain.eval()
    model.eval()
    torch.testing.assert_close(plain(x), model(x), atol=0, rtol=0)
    for key, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(value, model.state_dict()[key], atol=0, rtol=0)


@pytest.mark.parametrize("first_split", [True, False], ids=["from_split_ckpt", "from_plain_ckpt"])
def test_resume_equals_uninterrupted(tmp_path, first_split):
    """A 20-step run writes a checkpoint at step 10; a split run resumed from it ends where the 20-step run did."""
    torch.manual_seed(0)
    start = DagNet(optimizer="adam", lr=0.01, scheduler=True)
    straight, resumed = copy.deepcopy(start), copy.deepcopy(start)
    saver = ModelCheckpoint(tmp_path, every_n_train_steps=10, save_top_k=-1)
    torch.manual_seed(1)
    first = trainer(SplitStrategy(cut="b") if first_split else None, enable_checkpointing=True, callbacks=[saver])
    first.fit(straight, loader(320))
    (halfway,) = tmp_path.glob("*step=10.ckpt")
    trainer(SplitStrategy(cut="b")).fit(resumed, loader(320), ckpt_path=halfway)
    assert_same_parameters(straight, resumed, atol=1e-6)


def test_strategy_by_name_uses_embedded_server():
    assert "split" in L.pytorch.strategies.StrategyRegistry
    torch.manual_seed(0)
    model = DagNet()
    fit = trainer("split", max_steps=3)
    fit.fit(model, loader())
    assert isinstance(fit.strategy, lightning_split.SplitStrategy)
    assert fit.strategy.plan is not None


def test_wrong_model_on_server_is_refused_with_what_differs(dagnet_server):
    class Other(DagNet):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.head = torch.nn.Linear(8 * 8 * 8, 3)

    model = Other()
    strategy = SplitStrategy(server=dagnet_server.url, cut="b", model="tests.models:DagNet")
    with pytest.raises(RemoteError, match=r"different graph.*node"):
        trainer(strategy, max_steps=1).fit(model, loader(64))
    strategy = SplitStrategy(server=dagnet_server.url, cut="b")
    with pytest.raises(RemoteError, match=r"serves tests.models:DagNet.*--model"):
        trainer(strategy, max_steps=1).fit(Other(), loader(64))
    # the server survived both refusals
    torch.manual_seed(0)
    trainer(SplitStrategy(server=dagnet_server.url, cut="b"), max_steps=2).fit(DagNet(), loader(64))


def test_traffic_metrics_reach_lightning_loggers(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    strategy = SplitStrategy(cut="b")
    fit = trainer(strategy, max_steps=4, logger=CSVLogger(tmp_path), log_every_n_steps=2)
    fit.fit(DagNet(), loader(256))
    (metrics_file,) = tmp_path.rglob("metrics.csv")
    header = metrics_file.read_text().splitlines()[0]
    for name in ("split/bytes_up", "split/bytes_down", "split/remote_s", "split/wire_s"):
        assert name in header
    # two cut tensors of 32x8x8x8 float32 go up per forward: at least 64 KiB a step
    assert strategy.last_traffic["split/bytes_up"] >= 2 * 32 * 8 * 8 * 8 * 4
