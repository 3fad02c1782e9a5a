"""The wire codec: round trips, the frame layout, every validation rule, and fuzzing of decode."""

from __future__ import annotations

import enum
import io
import json
import math
import re
import struct
import tokenize
from collections import namedtuple
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_split.transport import wire
from lightning_split.transport.wire import DTYPES, MAGIC, Limits, WireError, decode, describe, encode

# --------------------------------------------------------------------------- helpers


def same(a: Any, b: Any) -> bool:
    """Structural equality that is bit-exact for tensors and floats (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_raw(a), _raw(b))
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def random_tensor(name: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A tensor of any wire dtype with random bit patterns (NaNs and infinities included for floats)."""
    g = torch.Generator().manual_seed(seed)
    if name == "bool":
        return torch.randint(0, 2, shape, generator=g).bool()
    itemsize = torch.empty((), dtype=DTYPES[name]).element_size()
    raw = torch.randint(0, 256, (math.prod(shape) * itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(DTYPES[name]).reshape(shape)


def frame(
    header: dict[str, Any] | bytes, data: bytes = b"", *, magic: bytes = MAGIC, header_len: int | None = None
) -> bytes:
    """A frame built by hand from the documented layout (independent of ``encode``)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return magic + struct.pack("<I", len(raw) if header_len is None else header_len) + raw + data


def desc(dtype: str = "float32", shape: list[Any] | None = None, offset: Any = 0, nbytes: Any = None) -> dict[str, Any]:
    shape = [2] if shape is None else shape
    if nbytes is None:
        nbytes = math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()
    return {"dtype": dtype, "shape": shape, "offset": offset, "nbytes": nbytes}


def tframe(descs: list[dict[str, Any]], data: bytes = bytes(64), **payload: Any) -> bytes:
    """A frame with a tensor table; by default the payload references every tensor once."""
    body = payload or {"x": [{"$t": i} for i in range(len(descs))]}
    return frame({**body, "tensors": descs}, data)


# --------------------------------------------------------------------------- round trips


def test_round_trip_nested_plain_values() -> None:
    payload = {
        "v": 1,
        "nested": {"a": [1, 2.5, None, True, False, "s"], "b": {"c": {"d": []}}, "e": {}, "tensors": [1, 2]},
        "tuples": (1, (2, (3,)), [(), ("x",)]),
        "floats": [float("inf"), float("-inf"), float("nan"), -0.0, 1e-310, 1.7976931348623157e308],
        "ints": [0, -1, 2**63, -(2**100), 10**200],
        "text": ["", "é ✓ 𝄞", "\ud800 lone surrogate", 'quote " backslash \\ nul \x00'],
        "$dollar": {"$ok": 1},
    }
    out = decode(encode(payload))
    assert same(out, payload)
    assert isinstance(out["tuples"][1][1], tuple)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_round_trip_every_dtype(name: str) -> None:
    shapes = [(), (0,), (3, 0, 2), (5,), (3, 4), (2, 3, 1, 2)]
    tensors = [random_tensor(name, shape, seed) for seed, shape in enumerate(shapes)]
    out = decode(encode({"ts": tensors}))
    assert same(out["ts"], tensors)
    for t in out["ts"]:
        assert t.is_contiguous() and t.device.type == "cpu"


def test_round_trip_strided_views_and_grad() -> None:
    base = torch.randn(6, 8, requires_grad=True)
    views = {
        "transposed": base.detach().T,
        "sliced": base.detach()[::2, 1::3],
        "expanded": torch.arange(3.0).expand(4, 3),
        "permuted": torch.randn(2, 3, 4).permute(2, 0, 1),
        "bf16_t": torch.randn(4, 5).bfloat16().T,
        "grad": base * 2,
        "param": torch.nn.Parameter(torch.ones(2)),
        "size": torch.Size([2, 3]),
    }
    out = decode(encode(views))
    for key, value in views.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(out[key], value.detach()), key
            assert out[key].is_contiguous() and not out[key].requires_grad
            assert type(out[key]) is torch.Tensor
    assert out["size"] == (2, 3) and type(out["size"]) is tuple


def test_tuple_subclasses_and_enums_arrive_as_plain_values() -> None:
    Point = namedtuple("Point", "x y")

    class Colour(enum.IntEnum):
        RED = 1

    out = decode(encode({"p": Point(1, 2), "c": Colour.RED, "f": Colour.RED / 2}))
    assert out == {"p": (1, 2), "c": 1, "f": 0.5}
    assert type(out["p"]) is tuple and type(out["c"]) is int


def test_decoded_tensors_are_writable_owned_and_independent() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    buffer = bytearray(encode({"t": t, "u": torch.ones(3, dtype=torch.int64)}))
    out = decode(buffer)
    buffer[:] = bytes(len(buffer))  # overwrite the source ...
    del buffer[:]  # ... and shrink it: decode must hold no export of the buffer
    assert torch.equal(out["t"], t)
    out["t"].add_(1)  # writable
    out["u"].resize_(10)  # owns resizable memory
    assert out["t"][0, 0] == 1


def test_encode_leaves_the_callers_tensors_alone() -> None:
    x = torch.zeros(4, requires_grad=True)
    y = torch.arange(6)
    encode({"x": x, "y": y})
    assert x.requires_grad and x.grad_fn is None
    y.resize_(12)  # no lasting numpy view: the storage stays resizable


def test_decode_accepts_bytes_like_inputs() -> None:
    data = encode({"t": torch.arange(5)})
    for variant in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
        assert torch.equal(decode(variant)["t"], torch.arange(5))


def test_large_tensor_round_trip_is_bit_exact() -> None:
    """64 MiB through encode and decode, bit for bit (throughput: ``benchmarks/wire.py``)."""
    x = torch.randn(16 * 2**20)
    data = encode({"x": x})
    y = decode(data)["x"]
    assert len(data) < x.nbytes + 256
    assert torch.equal(_raw(x), _raw(y))


# --------------------------------------------------------------------------- the documented layout


def test_encode_follows_the_documented_layout() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])  # 12 bytes: the next tensor is padded to offset 16
    b = torch.tensor([[7, 8]], dtype=torch.int16)
    data = encode({"a": a, "rest": (b, None)})
    assert data[:4] == b"LSW1"
    (header_len,) = struct.unpack("<I", data[4:8])
    assert (8 + header_len) % 8 == 0
    header = json.loads(data[8 : 8 + header_len])
    assert header["a"] == {"$t": 0} and header["rest"] == {"$tuple": [{"$t": 1}, None]}
    assert header["tensors"] == [
        {"dtype": "float32", "shape": [3], "offset": 0, "nbytes": 12},
        {"dtype": "int16", "shape": [1, 2], "offset": 16, "nbytes": 4},
    ]
    section = data[8 + header_len :]
    assert section[:12] == struct.pack("<3f", 1, 2, 3) and section[16:20] == struct.pack("<2h", 7, 8)


def test_hand_built_frame_decodes() -> None:
    section = struct.pack("<2d", 0.5, -1) + struct.pack("<4B", 1, 0, 1, 1) + bytes(4) + struct.pack("<H", 0x3F80)
    header = {
        "op": "forward",
        "values": [{"$t": 2}, {"$tuple": [{"$t": 0}, {"$t": 1}]}],
        "tensors": [
            desc("float64", [2], 0),
            desc("bool", [2, 2], 16),
            desc("bfloat16", [], 24),
        ],
    }
    out = decode(frame(header, section))
    assert out["op"] == "forward"
    scalar, (doubles, flags) = out["values"]
    assert scalar.dtype == torch.bfloat16 and scalar.item() == 1.0
    assert doubles.tolist() == [0.5, -1.0]
    assert flags.tolist() == [[True, False], [True, True]]


def test_header_without_padding_and_trailing_bytes_are_accepted() -> None:
    data = frame({"t": {"$t": 0}, "tensors": [desc("uint8", [3], 0)]}, b"abc" + bytes(5))
    assert decode(data)["t"].tolist() == [97, 98, 99]


# --------------------------------------------------------------------------- validation

NESTED_40 = {"x": json.loads("[" * 40 + "]" * 40)}
CASES: list[tuple[str, bytes, Limits, str]] = [
    ("empty", b"", Limits(), r"truncated frame: 0 bytes"),
    ("truncated prefix", b"LSW1\x00", Limits(), r"truncated frame: 5 bytes"),
    ("bad magic", frame({"tensors": []}, magic=b"LSW2"), Limits(), r"bad magic b'LSW2'"),
    ("pickle magic", b"\x80\x04\x95" + bytes(20), Limits(), r"bad magic"),
    ("header past end", frame(b'{"tensors":[]}', header_len=15), Limits(), r"header length 15 runs past the end"),
    ("header huge", frame(b"{}", header_len=2**32 - 1), Limits(), r"header length 4294967295 exceeds max_header_bytes"),
    ("header over limit", frame({"tensors": [], "k": "x" * 100}), Limits(max_header_bytes=64), r"max_header_bytes=64"),
    ("non-utf8", frame(b'{"k": "\xff", "tensors": []}'), Limits(), r"header: not valid UTF-8"),
    ("utf16", frame('{"tensors": []}'.encode("utf-16")), Limits(), r"header: not valid UTF-8"),
    ("bad json", frame(b'{"tensors": [}'), Limits(), r"header: not valid JSON"),
    ("empty header", frame(b""), Limits(), r"header: not valid JSON"),
    ("trailing json", frame(b'{"tensors": []} {}'), Limits(), r"header: not valid JSON"),
    ("huge int literal", frame(b'{"tensors": [], "n": ' + b"9" * 5000 + b"}"), Limits(), r"header: not valid JSON"),
    ("array header", frame([]), Limits(), r"header: must be a JSON object, got list"),
    ("string header", frame(b'"hi"'), Limits(), r"header: must be a JSON object, got string"),
    ("no table", frame({"v": 1}), Limits(), r"header: missing the 'tensors' table"),
    ("table not list", frame({"tensors": {}}), Limits(), r"header\['tensors'\]: must be a list .* got object"),
    ("top-level marker", frame({"$t": 0, "tensors": []}), Limits(), r"top-level object cannot hold the marker keys"),
    (
        "too deep",
        frame({**NESTED_40, "tensors": []}),
        Limits(),
        r"header\['x'\](\[0\]){31}: nested deeper than max_depth=32",
    ),
    (
        "too deep limit",
        frame({"a": {"b": [1]}, "tensors": []}),
        Limits(max_depth=2),
        r"header\['a'\]\['b'\]: nested deeper",
    ),
    ("json recursion", frame(b'{"tensors": [], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), Limits(), r"deeper"),
    (
        "too many tensors",
        tframe([desc(offset=8 * i) for i in range(5)]),
        Limits(max_tensors=4),
        r"5 tensors exceed max_tensors=4",
    ),
    ("descriptor not object", tframe([[0]]), Limits(), r"tensor 0: descriptor must be an object, got list"),
    (
        "missing key",
        tframe([{"dtype": "float32", "shape": [2], "offset": 0}]),
        Limits(),
        r"tensor 0: .*missing \['nbytes'\]",
    ),
    ("extra key", tframe([{**desc(), "strides": [1]}]), Limits(), r"tensor 0: .*unexpected \['strides'\]"),
    (
        "complex dtype",
        tframe([desc("float32") | {"dtype": "complex64"}]),
        Limits(),
        r"tensor 0: dtype 'complex64' is not allowed",
    ),
    ("object dtype", tframe([desc() | {"dtype": "object"}]), Limits(), r"tensor 0: dtype 'object' is not allowed"),
    (
        "torch-style dtype",
        tframe([desc() | {"dtype": "torch.float32"}]),
        Limits(),
        r"dtype 'torch.float32' is not allowed",
    ),
    ("dtype not string", tframe([desc() | {"dtype": 5}]), Limits(), r"tensor 0: dtype must be a string, got int"),
    ("dtype off limits", tframe([desc("float64")]), Limits(dtypes=frozenset({"float32"})), r"'float64' is not allowed"),
    ("rank too big", tframe([desc(shape=[1] * 9)]), Limits(), r"tensor 0: rank 9 exceeds max_rank=8"),
    ("shape not list", tframe([desc() | {"shape": 2}]), Limits(), r"tensor 0: shape must be a list, got int"),
    (
        "negative dim",
        tframe([desc(), desc(), desc(), desc(shape=[2, -1], nbytes=0)]),
        Limits(),
        r"tensor 3: shape \[2, -1\] has a negative dimension",
    ),
    (
        "float dim",
        tframe([desc(shape=[2.0], nbytes=8)]),
        Limits(),
        r"tensor 0: shape \[2.0\] has a dimension that is a float",
    ),
    (
        "bool dim",
        tframe([desc(shape=[True], nbytes=4)]),
        Limits(),
        r"tensor 0: shape \[True\] has a dimension that is a bool",
    ),
    (
        "nbytes mismatch",
        tframe([desc(shape=[2, 3], nbytes=20)]),
        Limits(),
        r"tensor 0: nbytes 20 does not match float32 shape \[2, 3\] \(24 bytes\)",
    ),
    ("nbytes bool", tframe([desc(shape=[], nbytes=True)]), Limits(), r"tensor 0: nbytes must be an int, got bool"),
    ("nbytes float", tframe([desc(nbytes=8.0)]), Limits(), r"tensor 0: nbytes must be an int, got float"),
    ("negative offset", tframe([desc(offset=-8)]), Limits(), r"tensor 0: offset -8 is negative"),
    ("offset null", tframe([desc(offset=None)]), Limits(), r"tensor 0: offset must be an int, got null"),
    ("misaligned", tframe([desc(offset=4)]), Limits(), r"tensor 0: offset 4 is not a multiple of 8"),
    (
        "out of range",
        tframe([desc(offset=64)]),
        Limits(),
        r"tensor 0: bytes \[64, 72\) run past the end of the 64-byte",
    ),
    ("no data section", tframe([desc()], b""), Limits(), r"run past the end of the 0-byte data section"),
    ("trillion elements", tframe([desc("float32", [10**6, 10**6])]), Limits(), r"bytes \[0, 4000000000000\) run past"),
    ("overflow attempt", tframe([desc("float64", [2**62, 4], nbytes=0)]), Limits(), r"nbytes 0 does not match"),
    (
        "overlap",
        tframe([desc(shape=[4], offset=0), desc(shape=[4], offset=8)]),
        Limits(),
        r"tensor 1: bytes \[8, 24\) overlap tensor 0 at \[0, 16\)",
    ),
    (
        "overlap same start",
        tframe([desc(offset=16), desc(shape=[8], offset=16)]),
        Limits(),
        r"tensor 1: .* overlap tensor 0",
    ),
    (
        "dangling ref",
        tframe([desc()], x={"$t": 1}),
        Limits(),
        r"header\['x'\]: \{'\$t': 1\} refers to no tensor \(the table has 1\)",
    ),
    ("negative ref", tframe([desc()], x={"$t": -1}), Limits(), r"refers to no tensor"),
    (
        "duplicate ref",
        tframe([desc()], x=[{"$t": 0}, {"$t": 0}]),
        Limits(),
        r"header\['x'\]\[1\]: .*tensor 0 is referenced more than once",
    ),
    (
        "string ref",
        tframe([desc()], x={"$t": "x"}),
        Limits(),
        r"header\['x'\]: \{'\$t': 'x'\}: a tensor reference must be an int",
    ),
    ("bool ref", tframe([desc()], x={"$t": True}), Limits(), r"a tensor reference must be an int"),
    ("float ref", tframe([desc()], x={"$t": 0.0}), Limits(), r"a tensor reference must be an int"),
    (
        "ref with extra key",
        tframe([desc()], x={"$t": 0, "y": 1}),
        Limits(),
        r"header\['x'\]: an object with a '\$t' or '\$tuple' key must have no other key",
    ),
    (
        "tuple not list",
        tframe([], x={"$tuple": "ab"}),
        Limits(),
        r"header\['x'\]: \{'\$tuple': \.\.\.\} must hold a list, got string",
    ),
    ("both markers", tframe([], x={"$tuple": [], "$t": 0}), Limits(), r"must have no other key"),
    (
        "unreferenced",
        tframe([desc(), desc(offset=8)], x={"$t": 1}),
        Limits(),
        r"tensor 0: described in the table but never referenced",
    ),
    ("ref in table only", frame({"tensors": [desc()]}, bytes(8)), Limits(), r"tensor 0: described .* never referenced"),
]


@pytest.mark.parametrize(("data", "limits", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decode_rejects(data: bytes, limits: Limits, message: str) -> None:
    with (
        mock.patch.object(wire, "_new_tensor", side_effect=AssertionError("allocated before validation")),
        pytest.raises(WireError, match=message),
    ):
        decode(data, limits)
    assert isinstance(describe(data), str)


def test_size_limit_is_checked_before_anything_else() -> None:
    limits = Limits(max_message_bytes=100)
    assert decode(encode({"x": bytes(0).hex()}), limits) == {"x": ""}
    with pytest.raises(WireError, match=r"message of 101 bytes exceeds max_message_bytes=100"):
        decode(b"garbage!" + bytes(93), limits)  # bad magic too, but the size is the first thing checked
    with pytest.raises(WireError, match=r"max_message_bytes"):
        decode(encode({"t": torch.zeros(100)}), limits)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(WireError, match=r"got text"):
        decode("LSW1....")  # type: ignore[arg-type]
    with pytest.raises(WireError, match=r"bytes-like message, got int"):
        decode(5)  # type: ignore[arg-type]


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match=r"complex64"):
        Limits(dtypes=frozenset({"float32", "complex64"}))
    with pytest.raises(ValueError, match=r"max_depth"):
        Limits(max_depth=0)
    with pytest.raises(ValueError, match=r"max_tensors"):
        Limits(max_tensors=-1)


# --------------------------------------------------------------------------- encode refusals


class Custom:
    pass


REFUSALS: list[tuple[Any, str]] = [
    ({"ops": [{"x": {1, 2}}]}, r"^payload\['ops'\]\[0\]\['x'\]: cannot send a set$"),
    ({"a": Custom()}, r"^payload\['a'\]: cannot send a Custom$"),
    ({"a": b"raw"}, r"^payload\['a'\]: cannot send a bytes$"),
    ({"a": [1, 2j]}, r"^payload\['a'\]\[1\]: cannot send a complex$"),
    ({"a": torch.zeros(2, dtype=torch.complex64)}, r"^payload\['a'\]: cannot send a tensor of dtype torch.complex64"),
    ({"a": torch.zeros(2, dtype=torch.uint16)}, r"dtype torch.uint16"),
    ({"a": torch.zeros(2, 2).to_sparse()}, r"^payload\['a'\]: cannot send a torch.sparse_coo tensor"),
    ({"a": torch.zeros(2, device="meta")}, r"^payload\['a'\]: cannot send a meta tensor"),
    ({"a": {1: "x"}}, r"^payload\['a'\]: dict key 1 is a int; keys must be strings$"),
    ({"a": {("t",): 1}}, r"keys must be strings"),
    ({"tensors": []}, r"^payload\['tensors'\]: the key 'tensors' is reserved"),
    ({"a": {"$t": 0}}, r"^payload\['a'\]\['\$t'\]: the key '\$t' is reserved"),
    ({"$tuple": [1]}, r"^payload\['\$tuple'\]: the key '\$tuple' is reserved"),
    ({"a": range(3)}, r"cannot send a range"),
]


@pytest.mark.parametrize(("payload", "message"), REFUSALS, ids=[str(i) for i in range(len(REFUSALS))])
def test_encode_refuses_with_the_path(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        encode(payload)


def test_encode_refuses_cycles_and_non_mappings() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(TypeError, match=r"^payload\['a'\]\[1\]: cannot send a cyclic structure"):
        encode({"a": loop})
    top: dict[str, Any] = {}
    top["self"] = top
    with pytest.raises(TypeError, match=r"payload\['self'\]: cannot send a cyclic"):
        encode(top)
    shared = [1]
    assert decode(encode({"a": shared, "b": shared})) == {"a": [1], "b": [1]}  # sharing is not a cycle
    with pytest.raises(TypeError, match=r"payload: must be a mapping"):
        encode([1, 2])  # type: ignore[arg-type]


def test_a_tensor_sent_twice_arrives_as_two_tensors() -> None:
    t = torch.ones(2)
    out = decode(encode({"a": t, "b": [t]}))
    out["a"].zero_()
    assert out["b"][0].tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- small API


def test_dtype_names_and_specs() -> None:
    assert set(DTYPES) == set(Limits().dtypes)
    for name, dtype in DTYPES.items():
        assert wire.dtype_name(dtype) == name and wire.DTYPE_NAMES[dtype] == name
    with pytest.raises(TypeError, match=r"dtype torch.complex128 cannot be sent"):
        wire.dtype_name(torch.complex128)
    assert wire.tensor_spec(torch.zeros(2, 3, dtype=torch.bfloat16)) == ("bfloat16", (2, 3))
    assert wire.tensor_spec(torch.tensor(True)) == ("bool", ())
    with pytest.raises(TypeError):
        wire.tensor_spec(torch.zeros(1, dtype=torch.complex64))


def test_describe() -> None:
    data = encode({"v": 1, "seq": 7, "ops": [{"op": "step"}], "t": torch.zeros(4), "p": (1, 2)})
    line = describe(data)
    assert "\n" not in line
    assert (
        "v=1" in line and "seq=7" in line and "ops=[1 items]" in line and "t=<tensor>" in line and "p=(2 items)" in line
    )
    assert "1 tensor (16 B)" in line
    assert "not a lightning-split frame" in describe(b"\x80\x04hello")
    assert "bad header length" in describe(frame(b"{}", header_len=99))
    assert "unreadable header" in describe(frame(b"\xff"))
    assert "text message" in describe("hello")
    assert "not a frame" in describe(None)
    assert "MiB" in describe(encode({"x": torch.zeros(2**20)}))


# --------------------------------------------------------------------------- fuzzing

KEYS = st.text(max_size=6).filter(lambda k: k not in ("$t", "$tuple"))
TENSORS = st.builds(
    random_tensor,
    st.sampled_from(sorted(DTYPES)),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.integers(0, 2**31),
)
LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | TENSORS
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple) | st.dictionaries(KEYS, inner, max_size=4)
    ),
    max_leaves=16,
)
PAYLOADS = st.dictionaries(KEYS.filter(lambda k: k != "tensors"), VALUES, max_size=5)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from([0, 1, -1, 7, 8, 2**31, 2**63, 10**12, -(10**12)])
    | st.integers()
    | st.floats()
    | st.sampled_from(["float32", "bool", "complex64", "$t", ""]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["$t", "$tuple", "dtype", "a"]), inner, max_size=2)
    ),
    max_leaves=6,
)
FUZZ_LIMITS = Limits(max_message_bytes=1 << 16, max_header_bytes=1 << 12, max_tensors=12, max_rank=3, max_depth=12)
DEEP = Limits(max_depth=256)


def decode_checked(data: bytes, limits: Limits = FUZZ_LIMITS) -> dict[str, Any] | None:
    """Decode ``data``: a dict or a WireError, never another exception; tensor memory within the frame's size."""
    allocated: list[int] = []
    real = wire._new_tensor

    def counting(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        allocated.append(math.prod(shape) * torch.empty((), dtype=dtype).element_size())
        assert sum(allocated) <= min(len(data), limits.max_message_bytes), "allocated beyond the frame"
        return real(shape, dtype)

    with mock.patch.object(wire, "_new_tensor", counting):
        try:
            out = decode(data, limits)
        except WireError as exc:
            assert str(exc)
            out = None
    assert out is None or isinstance(out, dict)
    assert isinstance(describe(data), str)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PAYLOADS)
def test_fuzz_round_trip(payload: dict[str, Any]) -> None:
    assert same(decode(encode(payload), DEEP), payload)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: MAGIC + b))
def test_fuzz_random_bytes(data: bytes) -> None:
    decode_checked(data)


# Valid frames to mutate: fixed, so the fuzzer's time goes into mutations rather than into building payloads.
BASE_FRAMES = [
    encode({}),
    encode({"v": 1, "seq": 3, "ops": [{"op": "step", "optimizer": 0}]}),
    encode({"t": torch.arange(6.0).reshape(2, 3)}),
    encode({"x": (random_tensor("bfloat16", (3,)), [random_tensor("bool", (2, 2)), None]), "s": "é", "f": [1.5, -0.0]}),
    encode({"ts": [random_tensor(name, (2,) * (i % 3), i) for i, name in enumerate(sorted(DTYPES))]}),
    encode({"empty": torch.zeros(0, 3), "scalar": torch.tensor(7), "nested": {"a": {"b": ({"$ok": [1]},)}}}),
]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(BASE_FRAMES)))
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "length", "header"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            bit = draw(st.integers(0, len(data) * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "splice":
        at = draw(st.integers(0, len(data)))
        data[at : at + draw(st.integers(0, 16))] = draw(st.binary(max_size=16))
    elif kind == "length":
        data[4:8] = struct.pack("<I", draw(st.integers(0, len(data)) | st.integers(0, 2**32 - 1)))
    else:
        (header_len,) = struct.unpack_from("<I", data, 4)
        header = json.loads(data[8 : 8 + header_len])
        section = bytes(data[8 + header_len :])
        table = header["tensors"]
        target = draw(st.sampled_from(["descriptor", "new descriptor", "marker", "key"]))
        if target == "descriptor" and table:
            entry = table[draw(st.integers(0, len(table) - 1))]
            entry[draw(st.sampled_from(["dtype", "shape", "offset", "nbytes", "extra"]))] = draw(JSON_VALUES)
        elif target == "new descriptor":
            table.append(desc("float32", draw(st.lists(st.integers(0, 10**7), max_size=3)), draw(st.integers(0, 64))))
            header["new"] = {"$t": len(table) - 1}
        elif target == "marker":
            header["m"] = {draw(st.sampled_from(["$t", "$tuple"])): draw(JSON_VALUES)}
        else:
            header[draw(st.sampled_from(["tensors", "$t", "x"]))] = draw(JSON_VALUES)
        data = bytearray(frame(header, section))
    return bytes(data)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_fuzz_mutated_frames(data: bytes) -> None:
    decode_checked(data)


def test_claimed_huge_tensors_allocate_nothing() -> None:
    for shape in ([10**12], [10**6, 10**6], [2**40, 2**40, 2**40]):
        entry = desc("float32", shape)
        assert decode_checked(tframe([entry], bytes(64)), Limits()) is None


# --------------------------------------------------------------------------- no code from the network


def test_wire_module_never_unpickles_or_executes() -> None:
    source = Path(wire.__file__).read_text(encoding="utf-8")
    names = {tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.NAME}
    forbidden = {
        "pickle", "cPickle", "_pickle", "cloudpickle", "dill", "marshal", "shelve", "copyreg", "Unpickler",
        "allow_pickle", "load", "eval", "exec", "compile", "__import__", "importlib", "import_module",
    }  # fmt: skip
    assert not names & forbidden, f"wire.py uses {sorted(names & forbidden)}"
    assert not re.search(r"torch\s*\.\s*load|weights_only", source)
