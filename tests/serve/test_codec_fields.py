"""Hostile codec fields against a real ``serve`` process: each ends its request, never the server.

A session negotiates ``int8`` in its hello; then requests whose ``coded`` table lies (a bad
scale, a table of the wrong length, data of the wrong dtype, an unknown field) are sent as raw
frames. Each gets an error reply naming the problem, and the session still trains afterwards
with the same results. A hello naming an unknown codec is refused with the known ones listed.
"""

from __future__ import annotations

import pytest
import torch
from websockets.sync.client import connect

from lightning_split.graph.describe import ModelDescription
from lightning_split.runtime.device import SplitRuntime
from lightning_split.runtime.placement import place_model
from lightning_split.transport import coding, messages, protocol, wire
from lightning_split.transport.client import RemoteServer
from lightning_split.transport.codecs import CODECS
from tests.models import DagNet, digits


def _session(url: str, codec: str) -> tuple[SplitRuntime, torch.Tensor, dict]:
    torch.manual_seed(0)
    model = DagNet()
    images = digits(32).tensors[0]
    plan = place_model(model, (images,), {}, cut="b")
    fields = ModelDescription.of("tests.models:DagNet", dict(model.hparams), plan.traced, plan.example).to_wire()
    runtime = SplitRuntime(
        model,
        plan.graph_module,
        plan.spec,
        RemoteServer(url),
        {**fields, "codec": codec},
        graph_args=plan.traced.graph_args,
    )
    runtime.open([torch.optim.SGD(model.parameters(), lr=0.1)])
    return runtime, images, fields


def _send_raw(remote: RemoteServer, op: dict) -> dict:
    """One request of ``op`` (a wire dict) with the next sequence number; the decoded reply."""
    data = wire.encode({"v": protocol.VERSION, "seq": remote.protocol.seq + 1, "ops": [op]})
    return wire.decode(remote._exchange(data))


def _coded_forward(cut_values: list[torch.Tensor]) -> dict:
    op = messages.Forward(
        id=999, values=cut_values, requires_grad=[False] * len(cut_values), training=True, grad=False, rng=None
    )
    return coding.pack(op.to_wire(), "values", CODECS["int8"])


def _bad_cases(good: dict) -> dict[str, dict]:
    def changed(edit) -> dict:
        op = {**good, "values": list(good["values"]), "coded": [dict(entry) for entry in good["coded"]]}
        edit(op)
        return op

    def scale(value):
        return lambda op: op["coded"][0].update(scale=value)

    rows = good["coded"][0]["scale"].shape[0]
    return {
        "finite and >= 0": changed(scale(-torch.ones(rows))),
        "finite": changed(scale(torch.full((rows,), float("nan")))),
        "has shape": changed(scale(torch.ones(rows + 1))),
        "float32 tensor": changed(scale(torch.ones(rows, dtype=torch.float64))),
        "must be a float32": changed(lambda op: op["coded"][0].pop("scale")),
        "entries for more tensors": changed(lambda op: op["coded"].pop()),
        "entries for fewer tensors": changed(lambda op: op["coded"].append(None)),
        "data must be a int8 tensor": changed(lambda op: op["values"].__setitem__(0, op["values"][0].float())),
        "unexpected header field": changed(lambda op: op["coded"][0].update(zero=3)),
        "must be null or an object": changed(lambda op: op["coded"][0].update(dtype="int64")),
        "must be a list": changed(lambda op: op.update(coded={"a": 1})),
    }


def test_hostile_codec_fields_end_the_request_not_the_server(dagnet_server):
    runtime, images, _ = _session(dagnet_server.url, "int8")
    expected = runtime.forward(images)
    remote = runtime.remote
    cut_values = [torch.randn(32, 8, 8, 8), torch.randn(32, 8, 8, 8)]
    good = _coded_forward(cut_values)
    assert "results" in _send_raw(remote, good)  # the well-formed coded request passes
    remote.protocol.seq += 1
    for fragment, op in _bad_cases(good).items():
        reply = _send_raw(remote, op)
        assert "error" in reply, fragment
        assert fragment in reply["error"]["message"], (fragment, reply["error"]["message"])
    again = runtime.forward(images)  # the session still serves, with the same results
    torch.testing.assert_close(again, expected)
    runtime.close()


def test_a_hello_with_an_unknown_codec_is_refused_naming_the_known_ones(dagnet_server):
    runtime, _, fields = _session(dagnet_server.url, "none")
    runtime.close()  # brings the suffix's weights home
    every = runtime.module.state_dict()
    state = {key: every[key] for key in runtime.server_state_keys}
    hello = messages.Hello(**fields, spec=runtime.spec.to_json(), optimizers=[], state=state).to_wire()
    with connect(dagnet_server.url, proxy=None, compression=None) as ws:
        ws.send(wire.encode({"v": protocol.VERSION, "seq": 0, "ops": [{**hello, "codec": "zip"}]}))
        reply = wire.decode(ws.recv())
        assert "unknown codec 'zip'" in reply["error"]["message"]
        assert "none, fp16, bf16, int8" in reply["error"]["message"]
        ws.send(wire.encode({"v": protocol.VERSION, "seq": 0, "ops": [hello]}))
        assert "results" in wire.decode(ws.recv())  # the same connection opens a session afterwards


def test_the_device_refuses_an_unknown_codec_before_connecting():
    from lightning_split import SplitStrategy

    with pytest.raises(ValueError, match="unknown codec 'zip'; known codecs: none, fp16, bf16, int8"):
        SplitStrategy(codec="zip")
