"""Protocol fuzzing against a real `lightning-split serve` process.

Thousands of malformed frames and messages (random bytes, corrupted valid frames, well-formed
frames with wrong fields, ops out of order, hostile tensors inside an open session) must each
get an error reply, and afterwards the same server trains a well-behaved client exactly like
local training.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_split.transport import messages, wire
from lightning_split.transport.messages import OPS
from lightning_split.transport.protocol import VERSION, encode_request
from tests.helpers import assert_same_parameters, fit_pair, open_session

pytestmark = pytest.mark.slow

SETTINGS = settings(
    max_examples=800, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
)

_dtypes = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool, torch.float16])
_tensors = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple),
    _dtypes,
)
_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=12), _tensors
)
_keys = st.text(max_size=8).filter(lambda key: not key.startswith("$"))  # "$t", "$tuple" are wire markers
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def _ops(draw) -> dict:
    name = draw(st.sampled_from([*OPS, "nope", ""]))
    fields = [spec.name for spec in dataclasses.fields(OPS[name])] if name in OPS else []
    op = {"op": name}
    for key in fields:
        if draw(st.booleans()) or draw(st.booleans()):
            op[key] = draw(_values)
    if draw(st.integers(0, 5)) == 0:
        op[draw(_keys)] = draw(_values)
    return op


_messages = st.builds(
    lambda v, seq, ops: wire.encode({"v": v, "seq": seq, "ops": ops}),
    st.one_of(st.just(VERSION), _leaves),
    st.one_of(st.integers(-3, 50), _leaves),
    st.one_of(st.lists(_ops(), max_size=4), _values),
)


def _valid_frame() -> bytes:
    return encode_request(3, [messages.Forward(id=1, values=[torch.ones(2, 3)], requires_grad=[True],
                                               training=True, grad=True, rng=None)])  # fmt: skip


_corrupted = st.builds(
    lambda frame, edits: _apply(frame, edits),
    st.just(_valid_frame()),
    st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 255), st.sampled_from(["set", "cut", "insert"])), max_size=4
    ),
)


def _apply(frame: bytes, edits) -> bytes:
    data = bytearray(frame)
    for position, byte, kind in edits:
        position %= max(1, len(data))
        if not data:
            data.append(byte)
        elif kind == "set":
            data[position] = byte
        elif kind == "cut":
            del data[position:]
        else:
            data.insert(position, byte)
    return bytes(data)


_anything = st.one_of(st.binary(max_size=300), _corrupted, _messages)


def _exchange(socket, message) -> dict:
    socket.send(message)
    reply = socket.recv(timeout=30)
    assert isinstance(reply, bytes)
    return wire.decode(reply)


def test_fuzzed_messages_get_error_replies_and_the_server_still_trains_exactly(dagnet_server):
    from websockets.sync.client import connect

    counts = {"sent": 0, "errors": 0}

    with connect(dagnet_server.url, proxy=None, compression=None, max_size=2**26) as ws:

        @SETTINGS
        @given(_anything)
        def without_session(message):
            payload = _exchange(ws, message)
            counts["sent"] += 1
            counts["errors"] += "error" in payload

        without_session()

    runtime, _, _ = open_session(dagnet_server.url)
    socket = runtime.remote._socket

    @SETTINGS
    @given(st.one_of(_messages, _corrupted))
    def inside_a_session(message):
        payload = _exchange(socket, message)
        counts["sent"] += 1
        counts["errors"] += "error" in payload

    inside_a_session()
    assert counts["sent"] >= 1600
    assert counts["errors"] >= 0.95 * counts["sent"], counts

    local, split, _ = fit_pair({"optimizer": "sgd", "momentum": 0.9}, {}, server=dagnet_server.url)
    assert_same_parameters(local, split)
