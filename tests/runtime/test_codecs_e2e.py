"""Codecs end to end against a real ``serve`` process: bytes counted at the server's socket, accuracy on digits.

A TCP proxy between the device and the server counts what the server's socket receives (not
the project's own counters); the digits MLP is split after its first layer and trained for 3
epochs with each codec. The codec must cut those bytes by its ratio (fp16 at least 1.8x, int8
at least 3.0x fewer than none) and keep validation accuracy within 3 points of none.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from lightning_split import SplitStrategy
from tests.faultproxy import FaultProxy
from tests.helpers import ServeProcess, trainer
from tests.models import DigitsMLP, digits

pytestmark = pytest.mark.slow

EPOCHS = 3


@pytest.fixture(scope="module")
def mlp_server():
    server = ServeProcess("--model", "tests.models:DigitsMLP")
    yield server
    server.stop()


def _loaders() -> tuple[DataLoader, DataLoader]:
    data = digits()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    train, val = Subset(data, order[:1400]), Subset(data, order[1400:])
    return DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=128)


def _accuracy(model: DigitsMLP, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return hits / sum(len(y) for _, y in loader)


def _train(url_port: int, codec: str) -> tuple[dict[str, int], float]:
    """Train the MLP split after l1 with ``codec`` through a counting proxy; bytes relayed and val accuracy."""
    proxy = FaultProxy(url_port)
    try:
        torch.manual_seed(0)
        model = DigitsMLP()
        train, val = _loaders()
        torch.manual_seed(1)
        strategy = SplitStrategy(server=proxy.url, cut="l1", codec=codec, init_args={"hidden": 256, "lr": 1e-3})
        trainer(strategy, max_epochs=EPOCHS, max_steps=-1).fit(model, train, val)
        return dict(proxy.relayed), _accuracy(model, val)
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def runs(mlp_server):
    port = int(mlp_server.url.rsplit(":", 1)[1])
    return {codec: _train(port, codec) for codec in ("none", "fp16", "bf16", "int8")}


@pytest.mark.parametrize(("codec", "factor"), [("fp16", 1.8), ("bf16", 1.8), ("int8", 3.0)])
def test_server_socket_receives_codec_ratio_fewer_bytes(runs, codec, factor):
    none_up, coded_up = runs["none"][0]["up"], runs[codec][0]["up"]
    assert none_up >= factor * coded_up, f"{codec}: {none_up} / {coded_up} = {none_up / coded_up:.2f}x < {factor}x"
    assert runs["none"][0]["down"] > runs[codec][0]["down"]  # the gradients and outputs coming back shrink too


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8"])
def test_validation_accuracy_stays_within_3_points(runs, codec):
    assert runs["none"][1] > 0.8  # the baseline learned something: the comparison means something
    assert abs(runs[codec][1] - runs["none"][1]) <= 0.03, {name: acc for name, (_, acc) in runs.items()}
