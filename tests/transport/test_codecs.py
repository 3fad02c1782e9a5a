"""Codecs without a network: round trips, error bounds, bit-exact ``none``, and every received field checked."""

from __future__ import annotations

import pytest
import torch

from lightning_split.planning.pipelined import CODEC_RATIOS
from lightning_split.transport import coding, messages, protocol
from lightning_split.transport.codecs import CODECS, Codec, TopK, get_codec, register_codec
from lightning_split.transport.errors import ProtocolError

SHAPES = [(32, 128), (4, 8, 3, 3), (7,), ()]


@pytest.mark.parametrize("name", ["fp16", "bf16", "int8"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_keeps_shape_and_dtype_within_the_codecs_error(name, shape, dtype):
    codec = CODECS[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    data, fields = codec.encode(x)
    y = codec.decode(data, fields, dtype)
    assert (y.shape, y.dtype) == (x.shape, dtype)
    bound = {"fp16": 2**-11, "bf16": 2**-8, "int8": 1 / 254}[name]
    if name == "int8":  # half a step of the row's scale
        rows = x.reshape(1, -1) if x.dim() == 0 else x.reshape(x.shape[0], -1)
        allowed = (rows.abs().amax(1, keepdim=True) * bound).expand_as(rows).reshape(x.shape)
        assert bool(((y - x).abs() <= allowed * 1.0001 + 1e-12).all())
    else:
        assert bool(((y - x).abs() <= x.abs() * bound + 1e-7).all())
    assert data.element_size() * data.numel() == pytest.approx(x.numel() * 4 * codec.ratio)


def test_fp16_saturates_instead_of_overflowing_and_int8_sends_zero_rows_and_nan_as_zero():
    big = torch.tensor([1e6, -1e6, 3.0])
    assert CODECS["fp16"].decode(*CODECS["fp16"].encode(big), torch.float32).tolist() == [65504.0, -65504.0, 3.0]
    x = torch.tensor([[0.0, 0.0], [float("nan"), 2.0]])
    data, fields = CODECS["int8"].encode(x)
    assert CODECS["int8"].decode(data, fields, torch.float32).tolist() == [[0.0, 0.0], [0.0, 2.0]]


def test_ratios_are_the_planners():
    for name in ("none", "fp16", "bf16", "int8"):
        assert CODECS[name].ratio == CODEC_RATIOS[name]


def _forward(values) -> messages.Forward:
    return messages.Forward(
        id=1, values=values, requires_grad=[False] * len(values), training=True, grad=False, rng=None
    )


def test_none_writes_the_bytes_of_a_session_without_codecs():
    values = [torch.randn(4, 3), (torch.randn(2), 5)]
    wired = coding.pack(_forward(values).to_wire(), "values", CODECS["none"])
    assert coding.CODED_KEY not in wired
    plain = protocol.encode_request(3, [_forward(values)])
    assert protocol.encode_request(3, [_forward(values)], CODECS["none"]) == plain


@pytest.mark.parametrize("name", ["fp16", "bf16", "int8"])
def test_the_protocol_codes_every_crossing_field_both_ways(name):
    device, server = protocol.DeviceProtocol(), protocol.ServerProtocol()
    hello_codec = CODECS[name]
    device.codec, server.codec, server.attached = hello_codec, hello_codec, True
    x = torch.randn(32, 64)
    values = [x, 3, (x * 2, None), {"k": torch.arange(3)}]
    sent = device.request([_forward(values)])
    (op,) = server.receive(sent.data).ops
    assert torch.allclose(op.values[0], x, atol=0.05) and op.values[0].dtype == torch.float32
    assert op.values[1] == 3 and op.values[2][1] is None and op.values[3]["k"].tolist() == [0, 1, 2]
    request = protocol.Request(sent.seq, (op,))
    reply = server.reply(request, [messages.ForwardReply(outputs=[x[:, :10]], rng=None, compute_s=0.0)])
    (result,) = device.receive(reply, sent)
    assert torch.allclose(result.outputs[0], x[:, :10], atol=0.05)
    raw = protocol.DeviceProtocol().request([_forward(values)])
    assert len(sent.data) < 0.6 * len(raw.data)  # the float tensors went narrower
    assert device.clock.tensors == 3 and server.clock.tensors == 3 and device.clock.encode_s > 0


def test_a_hello_sets_the_device_codec_for_the_following_requests():
    fields = dict(model="m:M", init_args={}, fingerprint="f", example={}, spec={}, optimizers=[], state={})
    device = protocol.DeviceProtocol()
    device.request([messages.Hello(**fields, codec="int8")])
    assert device.codec.name == "int8"
    with pytest.raises(ProtocolError, match="unknown codec 'zip'; known codecs: none, fp16, bf16, int8"):
        messages.Hello(**fields, codec="zip")


def test_coded_table_on_a_session_without_codec_or_an_op_without_tensors_is_refused():
    wired = coding.pack(_forward([torch.randn(2, 2)]).to_wire(), "values", CODECS["fp16"])
    with pytest.raises(ProtocolError, match="the session sends tensors as they are"):
        coding.unpack(wired, "values", CODECS["none"])
    with pytest.raises(ProtocolError, match="on a message without coded tensors"):
        coding.unpack({"op": "zero_grad", "coded": []}, None, CODECS["fp16"])


def test_get_codec_names_the_known_ones_and_a_registered_codec_is_known_to_the_planner():
    with pytest.raises(ValueError, match="known codecs: none, fp16, bf16, int8"):
        get_codec("gzip")
    topk = register_codec(TopK(0.25))
    try:
        assert get_codec("topk25") is topk and CODEC_RATIOS["topk25"] == pytest.approx(0.375)
        x = torch.randn(8, 8)
        y = topk.decode(*topk.encode(x), torch.float32)
        kept = y != 0
        assert int(kept.sum()) == 16 and torch.allclose(y[kept], x[kept], atol=1e-2)
        with pytest.raises(ProtocolError, match="'indices' must lie in"):
            data, fields = topk.encode(x)
            topk.decode(data, {**fields, "indices": fields["indices"] + 1000}, torch.float32)
    finally:
        CODECS.pop("topk25"), CODEC_RATIOS.pop("topk25")
    with pytest.raises(TypeError):
        register_codec(object())  # type: ignore[arg-type]
    assert issubclass(TopK, Codec)
