"""The server answers bad input with an error and keeps serving; tokens are checked at the handshake."""

from __future__ import annotations

import pytest
import torch
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from lightning_split import SplitStrategy
from lightning_split.transport import wire
from lightning_split.transport.client import ConnectionFailed
from lightning_split.transport.protocol import VERSION
from tests.helpers import ServeProcess, trainer
from tests.models import DagNet, loader


def raw_request(seq: int, ops: list) -> bytes:
    """A request frame with ops as given (malformed ones included), bypassing the typed messages."""
    return wire.encode({"v": VERSION, "seq": seq, "ops": ops})


def error_of(reply: bytes) -> str:
    payload = wire.decode(reply)
    assert "error" in payload, payload
    return payload["error"]["message"]


def test_malformed_messages_get_errors_and_the_server_keeps_serving(dagnet_server):
    with connect(dagnet_server.url, proxy=None, compression=None) as ws:
        ws.send(b"\x00garbage")
        assert "undecodable" in error_of(ws.recv(timeout=10))
        ws.send("text is not allowed")
        assert "binary" in error_of(ws.recv(timeout=10))
        ws.send(raw_request(0, [{"op": "forward", "id": 0}]))
        assert "missing field" in error_of(ws.recv(timeout=10))
        ws.send(raw_request(1, [{"op": "launch_missiles"}]))
        assert "unknown op" in error_of(ws.recv(timeout=10))
        ws.send(raw_request(2, [{"op": "state_dict"}]))
        assert "first op must be 'hello'" in error_of(ws.recv(timeout=10))
        header = wire.encode({"v": 1, "seq": 3, "ops": []})
        ws.send(header[:-1] + b"\xff")
        ws.recv(timeout=10)
    torch.manual_seed(0)
    trainer(SplitStrategy(server=dagnet_server.url, cut="b"), max_steps=2).fit(DagNet(), loader(64))


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text("s3cret\n")
    server = ServeProcess("--model", "tests.models:DagNet", "--token-file", str(token_file))
    yield server
    server.stop()


def test_token_required_at_handshake(token_server):
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        with pytest.raises(InvalidStatus) as info:
            connect(token_server.url, proxy=None, additional_headers=headers)
        assert info.value.response.status_code == 401
    with pytest.raises(ConnectionFailed, match=r"HTTP 401.*LIGHTNING_SPLIT_TOKEN"):
        trainer(SplitStrategy(server=token_server.url, cut="b", token="wrong"), max_steps=1).fit(DagNet(), loader(64))
    torch.manual_seed(0)
    trainer(SplitStrategy(server=token_server.url, cut="b", token="s3cret"), max_steps=2).fit(DagNet(), loader(64))
