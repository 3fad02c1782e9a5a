"""Frames as fragments: the same bytes as one frame, no copy of tensor bytes on encode, views on decode.

The byte stream is the wire format's; these tests check that holding it as fragments changes
nothing a receiver can see (any re-fragmentation decodes alike, every hostile-input check
still fires, before any allocation), and what it saves (the encoder's fragments are the
tensors' memory; a decoded large tensor is a view of its fragment when it may be one).
"""

from __future__ import annotations

import ctypes
import itertools
import random
import warnings
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_split.transport import fragments, messages, protocol, wire
from lightning_split.transport.fragments import MAX_FRAGMENTS, SHARED_BYTES, Frame
from lightning_split.transport.wire import WireError, decode, describe, encode, encode_fragments
from tests.transport.test_wire import CASES, same

BIG = SHARED_BYTES // 4  # float32 elements of a tensor that is shared


def address(buffer: Any) -> int:
    """The address of a bytes-like object's first byte."""
    if isinstance(buffer, (bytes, memoryview)) and memoryview(buffer).readonly:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def inside(tensor: torch.Tensor, buffer: Any) -> bool:
    """Whether ``tensor``'s memory lies inside ``buffer``'s."""
    start, size = address(buffer), memoryview(buffer).nbytes
    return start <= tensor.data_ptr() and tensor.data_ptr() + tensor.numel() * tensor.element_size() <= start + size


def received(frame: Frame) -> list[bytes]:
    """The fragments as websockets delivers them on the server: one fresh bytes object each."""
    return [bytes(part) for part in frame.fragments]


def resplit(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at ``cuts`` (positions, any order, duplicates allowed: empty fragments)."""
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --------------------------------------------------------------------------- payloads

DTYPE_NAMES = sorted(wire.DTYPES)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = wire.DTYPES[draw(st.sampled_from(DTYPE_NAMES))]
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    seed = draw(st.integers(0, 2**31))
    size = torch.Size(shape).numel() * dtype.itemsize
    data = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    if dtype == torch.bool:
        data = data % 2
    return data.view(dtype).reshape(shape)


PAYLOADS = st.fixed_dictionaries(
    {
        "pad": st.text(max_size=40),  # odd header sizes
        "many": st.lists(tensors(), max_size=12),
        "nested": st.dictionaries(st.sampled_from(["a", "b"]), st.tuples(tensors(), st.integers()), max_size=2),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PAYLOADS, st.sampled_from([8, 24, SHARED_BYTES]), st.lists(st.integers(0, 10**6), max_size=8))
def test_fragments_decode_like_the_frame_however_they_are_split(payload: dict, shared: int, cuts: list[int]) -> None:
    with mock.patch.object(fragments, "SHARED_BYTES", shared), mock.patch.object(wire, "SHARED_BYTES", shared):
        frame = encode_fragments(payload)
        data = encode(payload)
        assert bytes(frame) == data and len(frame) == len(data) and frame == data
        assert same(decode(data), payload)
        assert same(decode(frame), payload)
        assert same(decode(received(frame)), payload)
        assert same(decode(resplit(data, cuts)), payload)
        assert describe(resplit(data, cuts)) == describe(data)


def test_many_large_tensors_stay_within_the_fragment_cap() -> None:
    payload = {"x": [torch.full((3,), float(i)) for i in range(3 * MAX_FRAGMENTS)]}
    with mock.patch.object(fragments, "SHARED_BYTES", 8), mock.patch.object(wire, "SHARED_BYTES", 8):
        frame = encode_fragments(payload)
        assert len(frame.fragments) <= MAX_FRAGMENTS
        assert bytes(frame) == encode(payload)
        assert same(decode(received(frame)), payload)


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(("data", "limits", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_check_fires_for_fragments_before_any_allocation(data: bytes, limits, message: str) -> None:
    rng = random.Random(len(data))
    splits = [
        [data[i : i + 1] for i in range(len(data))],  # one byte per fragment
        resplit(data, [rng.randrange(len(data) + 1) for _ in range(5)]),
        [memoryview(data)],
    ]
    for parts in splits:
        with (
            mock.patch.object(wire, "_new_tensor", side_effect=AssertionError("allocated before validation")),
            mock.patch.object(wire, "share", side_effect=AssertionError("viewed before validation")),
            pytest.raises(WireError, match=message),
        ):
            decode(parts, limits)
        assert isinstance(describe(parts), str)


def test_fragments_must_be_binary() -> None:
    frame = encode({"x": 1})
    with pytest.raises(WireError, match=r"got text"):
        decode([frame[:4], "text"])  # type: ignore[list-item]
    with pytest.raises(WireError, match=r"bytes-like message, got int"):
        decode([frame, 5])  # type: ignore[list-item]
    assert "not a frame" in describe([frame, 5])


def test_the_size_limit_counts_every_fragment() -> None:
    data = encode({"t": torch.zeros(100)})
    with pytest.raises(WireError, match=rf"message of {len(data)} bytes exceeds max_message_bytes=100"):
        decode(resplit(data, [10, 200]), wire.Limits(max_message_bytes=100))


# --------------------------------------------------------------------------- no copies


def test_the_encoder_points_into_the_tensors() -> None:
    x, y = torch.randn(BIG), torch.arange(2 * BIG, dtype=torch.int64)
    small = torch.ones(3)
    frame = encode_fragments({"x": x, "small": small, "y": y})
    shared = [part for part in frame.fragments if isinstance(part, memoryview)]
    assert [address(part) for part in shared] == [x.data_ptr(), y.data_ptr()]
    assert [part.nbytes for part in shared] == [x.numel() * 4, y.numel() * 8]
    assert not any(inside(small, part) for part in frame.fragments)  # small ones are copied next to the header
    x[0] = 42.0  # the frame holds references, not copies: its bytes are the tensors' when it is sent
    assert decode(frame)["x"][0] == 42.0
    snapshot = frame.materialize()
    x[0] = 7.0
    assert decode(snapshot)["x"][0] == 42.0 and not snapshot.tensors


def test_a_large_aligned_tensor_is_decoded_as_a_view_of_its_fragment() -> None:
    payload = {"x": torch.randn(4, BIG), "rng": torch.randint(0, 255, (5056,), dtype=torch.uint8)}
    parts = received(encode_fragments(payload))
    out = decode(parts)
    assert same(out, payload)
    assert any(inside(out["x"], part) for part in parts)
    assert out["x"]._base is None and out["x"].is_contiguous()
    assert not any(inside(out["rng"], part) for part in parts)  # small: copied, so it pins no message
    out["x"].requires_grad_(True)
    (out["x"] * 2).sum().backward()  # a view of received memory is an ordinary leaf for autograd
    assert torch.equal(out["x"].grad, torch.full_like(out["x"], 2.0))

    single = encode(payload)  # one bytes message (an older peer): the view path too, when aligned
    assert inside(decode(single)["x"], single)

    writable = [bytearray(part) for part in parts]
    view = decode(writable)["x"]
    view[0, 0] = 1.5  # writing into a view writes into the message, which the transport holds nowhere else
    assert decode(writable)["x"][0, 0] == 1.5


def test_misaligned_spanning_or_empty_tensors_are_copied() -> None:
    x = torch.randn(BIG)
    data = encode({"x": x, "e": torch.empty(0, BIG)})
    start = len(data) - x.numel() * 4
    shifted = bytearray(len(data) + 1)
    shifted[1:] = data
    misaligned = memoryview(shifted)[1:]
    out = decode([misaligned[:start], misaligned[start:]])
    assert torch.equal(out["x"], x) and not inside(out["x"], shifted)
    spanning = resplit(data, [start + 1000])
    out = decode(spanning)
    assert torch.equal(out["x"], x) and not any(inside(out["x"], part) for part in spanning if part)
    assert out["e"].shape == (0, BIG)


# --------------------------------------------------------------------------- frames the protocol keeps


def test_the_replay_log_holds_snapshots() -> None:
    """A request the device may replay after later steps is materialised; one that it may not is not."""
    cut = torch.randn(BIG)
    forward = messages.Forward(id=0, values=[cut], requires_grad=[True], training=True, grad=True, rng=None)
    device = protocol.DeviceProtocol()
    fresh = device.request([forward])
    assert fresh.data.tensors  # sent from the tensor's own memory
    device.keep(True)  # the hello reply said the server persists the session
    assert not device.log[0].data.tensors
    logged = device.request([forward])
    before = bytes(logged.data)
    cut.add_(1.0)
    assert bytes(device.replay_from(logged.seq)[0].data) == before
    assert not logged.data.tensors
