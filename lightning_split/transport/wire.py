"""The lightning-split wire format: one binary websocket message, no pickle.

The device and the server exchange *frames*. Nothing received from the network is ever
unpickled, imported or executed: a frame is a JSON header of plain values plus raw tensor
bytes, and :func:`decode` checks every field against :class:`Limits` before it allocates
anything. The module is sans-I/O (bytes in, Python values out) so both sides share it and
the rules can be tested without a network.

Frame layout (normative)::

    offset 0    4 bytes   magic b"LSW1" (lightning-split wire, version 1)
    offset 4    4 bytes   header length H, unsigned little-endian
    offset 8    H bytes   header: a UTF-8 JSON object
    offset 8+H  ...       data section: the tensors' raw little-endian bytes

The header object's key ``"tensors"`` is reserved: it is the *tensor table*, a list of
descriptors ``{"dtype": "float32", "shape": [2, 3], "offset": 0, "nbytes": 24}``, one per
tensor, in index order. ``dtype`` is a wire name (:data:`DTYPES`); ``shape`` a list of
non-negative ints; ``nbytes`` equals the product of the shape times the item size;
``offset`` is relative to the start of the data section and a multiple of 8. A tensor's
bytes ``[offset, offset + nbytes)`` lie inside the data section and overlap no other
tensor's; elements are C-contiguous (row-major), bool as one byte 0/1, bfloat16 as its
16-bit pattern. Bytes of the data section that no tensor covers (alignment padding) are
ignored. The encoder pads the header with JSON whitespace so the data section also starts
at a multiple of 8 from the start of the frame; decoders must not rely on it.

The rest of the header is the payload. In it, and only there, two JSON objects are
markers: ``{"$t": i}`` stands for tensor ``i`` of the table and ``{"$tuple": [...]}`` for a
Python tuple. A marker object has exactly that one key; each tensor is referenced exactly
once (aliasing is not preserved: a tensor that appears twice in a payload is sent twice).
So any nesting of dicts with string keys, lists, tuples, ints, floats (``NaN``,
``Infinity`` and ``-Infinity`` are written as Python's :mod:`json` does), bools, ``None``,
strings and tensors round-trips; tuple subclasses (``torch.Size``, named tuples) arrive as
plain tuples, and a mapping arrives as a dict. Nesting depth counts JSON levels: the header
object is level 1, and every object or array inside a level-``d`` container is level
``d + 1`` (markers included).

The format is this byte stream, however it is held in memory: :func:`encode_fragments`
gives the same bytes as :func:`encode` as several buffers (each large tensor's own memory,
no copy; see :mod:`~lightning_split.transport.fragments`), sent as the fragments of one
websocket message, and :func:`decode` reads a frame split into fragments anywhere.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import torch

from lightning_split.transport.fragments import SHARED_BYTES, Buffer, FragmentError, Fragments, Frame, assemble, share
from lightning_split.transport.fragments import memory_of as _memory

__all__ = [
    "ALIGNMENT",
    "DTYPES",
    "DTYPE_NAMES",
    "MAGIC",
    "Frame",
    "Limits",
    "Message",
    "WireError",
    "decode",
    "describe",
    "dtype_name",
    "encode",
    "encode_fragments",
    "tensor_spec",
]

MAGIC = b"LSW1"
ALIGNMENT = 8
_PREFIX = struct.Struct("<4sI")  # magic, header length
_MAX_HEADER_FIELD = 2**32 - 1
_DEPTH_CAP = 256  # nesting cap for encode and for Limits.max_depth: far above real payloads, below the recursion limit
_TENSOR_KEY = "$t"
_TUPLE_KEY = "$tuple"
_TABLE_KEY = "tensors"
_DESCRIPTOR_KEYS = frozenset({"dtype", "shape", "offset", "nbytes"})
_BIG_ENDIAN = sys.byteorder == "big"

#: What :func:`decode` and :func:`describe` read: a frame as one bytes-like object, a list or tuple of its
#: fragments, or a Frame.
Message = Buffer | list[Buffer] | tuple[Buffer, ...] | Frame

#: Wire name -> torch dtype: every dtype the format can carry (the allowlist).
DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {
        "float32": torch.float32,
        "float64": torch.float64,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "int64": torch.int64,
        "int32": torch.int32,
        "int16": torch.int16,
        "int8": torch.int8,
        "uint8": torch.uint8,
        "bool": torch.bool,
    }
)
#: torch dtype -> wire name (the inverse of :data:`DTYPES`).
DTYPE_NAMES: Mapping[torch.dtype, str] = MappingProxyType({dtype: name for name, dtype in DTYPES.items()})
_ITEMSIZE: Mapping[str, int] = MappingProxyType(
    {name: torch.empty((), dtype=dtype).element_size() for name, dtype in DTYPES.items()}
)


class WireError(ValueError):
    """A received frame is malformed or exceeds the :class:`Limits`; the message names the field and the problem."""


@dataclass(frozen=True)
class Limits:
    """What :func:`decode` accepts. Checked before anything is allocated, so a hostile peer
    cannot make the receiver allocate more than ``max_message_bytes`` of tensor memory (plus
    the parsed header, whose size ``max_header_bytes`` bounds)."""

    max_message_bytes: int = 512 * 2**20
    max_header_bytes: int = 4 * 2**20
    max_tensors: int = 4096
    max_rank: int = 8
    max_depth: int = 32
    dtypes: frozenset[str] = frozenset(DTYPES)

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_header_bytes", "max_tensors", "max_rank", "max_depth"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"Limits.{name} must be a non-negative int, got {value!r}")
        if not 1 <= self.max_depth <= _DEPTH_CAP:
            raise ValueError(f"Limits.max_depth must be between 1 and {_DEPTH_CAP}, got {self.max_depth}")
        unknown = set(self.dtypes) - set(DTYPES)
        if unknown:
            raise ValueError(
                f"Limits.dtypes has names the wire cannot carry: {sorted(unknown)} (known: {sorted(DTYPES)})"
            )


def dtype_name(dtype: torch.dtype) -> str:
    """The wire name of ``dtype``; TypeError if the wire cannot carry it (complex, quantized, ...)."""
    try:
        return DTYPE_NAMES[dtype]
    except (KeyError, TypeError):
        raise TypeError(f"dtype {dtype} cannot be sent (the wire carries {', '.join(DTYPES)})") from None


def tensor_spec(t: torch.Tensor) -> tuple[str, tuple[int, ...]]:
    """``(wire dtype, shape)`` of a tensor, the form in which plans state what a message must carry."""
    return dtype_name(t.dtype), tuple(int(n) for n in t.shape)


# ----------------------------------------------------------------------------- encoding


def encode(payload: Mapping[str, Any]) -> bytes:
    """Encode a payload (a mapping of plain values and tensors, see the module docstring) as one frame.

    Tensors may live on any device and have any strides; they are detached and copied to
    contiguous CPU memory only when they are not already. Each tensor's bytes are copied
    exactly once, into the returned frame (:func:`encode_fragments` does not copy them).

    Raises:
        TypeError: something in the payload cannot be sent; the message gives its path,
            e.g. ``payload['ops'][0]['x']: cannot send a set``. That includes dicts with
            non-string keys, the keys ``"$t"`` / ``"$tuple"`` anywhere and ``"tensors"`` at
            the top level (reserved by the format), cycles, and tensors whose dtype, layout
            or device has no bytes to send.
    """
    head, table, flats = _layout(payload)  # flats keeps every tensor alive until the join: the views do not
    parts: list[bytes | memoryview] = [head]
    position = 0
    for entry, flat in zip(table, flats):
        if entry["offset"] > position:
            parts.append(bytes(entry["offset"] - position))
        if entry["nbytes"]:
            parts.append(_memory(flat))
        position = entry["offset"] + entry["nbytes"]
    return b"".join(parts)  # the one copy of the tensor bytes; CPython releases the GIL for big joins


def encode_fragments(payload: Mapping[str, Any]) -> Frame:
    """:func:`encode` without the join: the same bytes, as a :class:`~lightning_split.transport.fragments.Frame`.

    Each tensor of at least :data:`~lightning_split.transport.fragments.SHARED_BYTES` is a
    fragment of its own that points into the tensor's memory (a CPU tensor that is already
    contiguous is not copied at all); the prefix, the header, padding and small tensors are
    joined into the fragments between. The frame's bytes are its tensors' bytes *when it is
    sent*: the caller must not change them before, or keep :meth:`Frame.materialize`.

    Raises:
        TypeError: as :func:`encode`.
    """
    return assemble(*_layout(payload))


def _layout(payload: Mapping[str, Any]) -> tuple[bytes, list[dict[str, Any]], list[torch.Tensor]]:
    """The prefix and header of ``payload``'s frame, its tensor table, and each tensor's wire bytes (flat uint8)."""
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload: must be a mapping with string keys, got {type(payload).__name__}")
    if _TABLE_KEY in payload:
        raise TypeError(f"payload[{_TABLE_KEY!r}]: the key {_TABLE_KEY!r} is reserved for the tensor table")
    encoder = _Encoder()
    encoder.active.add(id(payload))
    header = encoder.mapping(payload, ["payload"], 1)

    table: list[dict[str, Any]] = []
    flats: list[torch.Tensor] = []
    offset = 0
    for t in encoder.tensors:
        flat = _wire_bytes(t)
        offset = _align(offset)
        table.append({"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "offset": offset, "nbytes": flat.numel()})
        flats.append(flat)
        offset += flat.numel()
    header[_TABLE_KEY] = table

    text = json.dumps(header, separators=(",", ":"), allow_nan=True).encode("ascii")
    text += b" " * (-len(text) % ALIGNMENT)
    if len(text) > _MAX_HEADER_FIELD:
        raise TypeError(f"payload: the header is {len(text)} bytes; the frame's length field holds at most 2**32 - 1")
    return _PREFIX.pack(MAGIC, len(text)) + text, table, flats


def _align(offset: int) -> int:
    return offset + (-offset % ALIGNMENT)


def _wire_bytes(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes in wire order as a flat uint8 CPU tensor: a view of ``t`` when it is contiguous on the CPU."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    raw = t.contiguous().reshape(-1).view(torch.uint8)
    if _BIG_ENDIAN and t.element_size() > 1:
        raw = raw.view(-1, t.element_size()).flip(-1).reshape(-1)
    return raw


class _Encoder:
    """Turns a payload into a JSON-ready tree, collecting tensors into the table in reference order."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self.active: set[int] = set()  # ids of the containers on the current path, to catch cycles

    def value(self, value: Any, path: list[str], depth: int) -> Any:
        if value is None or type(value) in (bool, int, float, str):
            return value
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return int(value)  # IntEnum and friends arrive as plain ints
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, torch.Tensor):
            return self.tensor(value, path)
        if isinstance(value, (Mapping, list, tuple)):
            if depth >= _DEPTH_CAP:
                raise TypeError(f"{_path(path)}: nested deeper than {_DEPTH_CAP} levels")
            if id(value) in self.active:
                raise TypeError(
                    f"{_path(path)}: cannot send a cyclic structure (this {type(value).__name__} contains itself)"
                )
            self.active.add(id(value))
            try:
                if isinstance(value, Mapping):
                    return self.mapping(value, path, depth + 1)
                items = [self.value(item, [*path, f"[{i}]"], depth + 1) for i, item in enumerate(value)]
                return items if isinstance(value, list) else {_TUPLE_KEY: items}
            finally:
                self.active.discard(id(value))
        raise TypeError(f"{_path(path)}: cannot send a {type(value).__name__}")

    def mapping(self, value: Mapping[Any, Any], path: list[str], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{_path(path)}: dict key {key!r} is a {type(key).__name__}; keys must be strings")
            if key in (_TENSOR_KEY, _TUPLE_KEY):
                raise TypeError(f"{_path([*path, f'[{key!r}]'])}: the key {key!r} is reserved by the wire format")
            out[str(key)] = self.value(item, [*path, f"[{key!r}]"], depth)
        return out

    def tensor(self, t: torch.Tensor, path: list[str]) -> dict[str, int]:
        if t.layout != torch.strided or t.is_nested:
            raise TypeError(f"{_path(path)}: cannot send a {t.layout} tensor; convert it to a dense one")
        if t.is_meta:
            raise TypeError(f"{_path(path)}: cannot send a meta tensor (it has no data)")
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(
                f"{_path(path)}: cannot send a tensor of dtype {t.dtype} (the wire carries {', '.join(DTYPES)})"
            )
        self.tensors.append(t)
        return {_TENSOR_KEY: len(self.tensors) - 1}


def _path(parts: list[str]) -> str:
    return "".join(parts)


# ----------------------------------------------------------------------------- decoding


class _Spec(NamedTuple):
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def decode(data: Message, limits: Limits = Limits()) -> dict[str, Any]:
    """Decode one frame into its payload, checking everything against ``limits`` first.

    ``data`` is the frame as one bytes-like object, as a list or tuple of them (the fragments of
    a websocket message, split anywhere) or as a :class:`~lightning_split.transport.fragments.Frame`
    (whose tensors a decoded view then shares: decoding in the process that encoded is for tests).
    The order of checks is what keeps hostile input cheap: the total size before anything
    is read, the prefix before the header is parsed, the tensor table and every reference
    before a single tensor is allocated. Tensor memory allocated is then at most the size of
    the data section, because the checked byte ranges do not overlap.

    Returns:
        The payload: the header without its tensor table, markers replaced by contiguous
        CPU tensors, and tuples. A tensor of at least
        :data:`~lightning_split.transport.fragments.SHARED_BYTES` whose bytes lie inside one
        fragment, aligned for its dtype, is a view of that fragment (it keeps the fragment
        alive, and writing into it writes into ``data``: the transport holds received
        messages nowhere else); every other tensor is fresh memory, independent of ``data``.

    Raises:
        WireError: the frame is malformed or over a limit; the message names the field.
    """
    try:
        stream = Fragments.of(data)
    except FragmentError as exc:
        raise WireError(str(exc)) from None
    size = stream.nbytes
    if size > limits.max_message_bytes:
        raise WireError(f"message of {size} bytes exceeds max_message_bytes={limits.max_message_bytes}")
    if size < _PREFIX.size:
        raise WireError(f"truncated frame: {size} bytes, shorter than the {_PREFIX.size}-byte prefix")
    magic, header_len = _PREFIX.unpack_from(stream.read(0, _PREFIX.size))
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}: not a lightning-split wire frame (expected {MAGIC!r})")
    if header_len > limits.max_header_bytes:
        raise WireError(f"header length {header_len} exceeds max_header_bytes={limits.max_header_bytes}")
    data_start = _PREFIX.size + header_len
    if data_start > size:
        raise WireError(f"header length {header_len} runs past the end of the frame ({size} bytes in all)")

    header = _parse_header(stream.read(_PREFIX.size, data_start), limits)
    specs = _check_table(header.pop(_TABLE_KEY), size - data_start, limits)
    _check_payload(header, len(specs), limits)

    tensors = [_read_tensor(stream, data_start, spec) for spec in specs]
    return {key: _build(value, tensors) for key, value in header.items()}


def _parse_header(raw: memoryview | bytes, limits: Limits) -> dict[str, Any]:
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"header: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        header = json.loads(text)
    except RecursionError:
        raise WireError(f"header: nested deeper than max_depth={limits.max_depth}") from None
    except ValueError as exc:  # JSONDecodeError, and ints beyond Python's digit limit
        raise WireError(f"header: not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise WireError(f"header: must be a JSON object, got {_json_type(header)}")
    if _TABLE_KEY not in header:
        raise WireError(f"header: missing the {_TABLE_KEY!r} table")
    if _TENSOR_KEY in header or _TUPLE_KEY in header:
        raise WireError(f"header: the top-level object cannot hold the marker keys {_TENSOR_KEY!r} / {_TUPLE_KEY!r}")
    return header


def _check_table(table: Any, data_len: int, limits: Limits) -> list[_Spec]:
    """Validate the tensor table against the data section; returns one spec per tensor."""
    if not isinstance(table, list):
        raise WireError(f"header[{_TABLE_KEY!r}]: must be a list of tensor descriptors, got {_json_type(table)}")
    if len(table) > limits.max_tensors:
        raise WireError(f"header[{_TABLE_KEY!r}]: {len(table)} tensors exceed max_tensors={limits.max_tensors}")
    specs = [_check_descriptor(i, entry, data_len, limits) for i, entry in enumerate(table)]
    ranges = sorted((spec.offset, spec.offset + spec.nbytes, i) for i, spec in enumerate(specs) if spec.nbytes)
    for (start_a, end_a, a), (start_b, end_b, b) in itertools.pairwise(ranges):
        if start_b < end_a:
            first, second = sorted(((a, start_a, end_a), (b, start_b, end_b)))
            raise WireError(
                f"tensor {second[0]}: bytes [{second[1]}, {second[2]}) overlap tensor {first[0]} "
                f"at [{first[1]}, {first[2]})"
            )
    return specs


def _check_descriptor(i: int, entry: Any, data_len: int, limits: Limits) -> _Spec:
    if not isinstance(entry, dict):
        raise WireError(f"tensor {i}: descriptor must be an object, got {_json_type(entry)}")
    if entry.keys() != _DESCRIPTOR_KEYS:
        missing, extra = sorted(_DESCRIPTOR_KEYS - entry.keys()), sorted(entry.keys() - _DESCRIPTOR_KEYS)
        raise WireError(
            f"tensor {i}: descriptor must have exactly the keys dtype, shape, offset, nbytes"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {_clip(extra)}" if extra else "")
        )
    name, shape, offset, nbytes = entry["dtype"], entry["shape"], entry["offset"], entry["nbytes"]
    if not isinstance(name, str):
        raise WireError(f"tensor {i}: dtype must be a string, got {_json_type(name)}")
    if name not in limits.dtypes:
        raise WireError(f"tensor {i}: dtype {_clip(name)} is not allowed (allowed: {', '.join(sorted(limits.dtypes))})")
    if not isinstance(shape, list):
        raise WireError(f"tensor {i}: shape must be a list, got {_json_type(shape)}")
    if len(shape) > limits.max_rank:
        raise WireError(f"tensor {i}: rank {len(shape)} exceeds max_rank={limits.max_rank}")
    for dim in shape:
        if type(dim) is not int:
            raise WireError(f"tensor {i}: shape {_clip(shape)} has a dimension that is a {_json_type(dim)}, not an int")
        if dim < 0:
            raise WireError(f"tensor {i}: shape {_clip(shape)} has a negative dimension")
    for field, value in (("nbytes", nbytes), ("offset", offset)):
        if type(value) is not int:
            raise WireError(f"tensor {i}: {field} must be an int, got {_json_type(value)}")
        if value < 0:
            raise WireError(f"tensor {i}: {field} {value} is negative")
    expected = math.prod(shape) * _ITEMSIZE[name]  # exact Python ints: no overflow to exploit
    if nbytes != expected:
        raise WireError(
            f"tensor {i}: nbytes {_clip(nbytes)} does not match {name} shape {_clip(shape)} ({_clip(expected)} bytes)"
        )
    if offset % ALIGNMENT:
        raise WireError(f"tensor {i}: offset {_clip(offset)} is not a multiple of {ALIGNMENT}")
    if offset + nbytes > data_len:
        raise WireError(
            f"tensor {i}: bytes [{_clip(offset)}, {_clip(offset + nbytes)}) run past the end of the "
            f"{data_len}-byte data section"
        )
    return _Spec(DTYPES[name], tuple(shape), offset, nbytes)


def _check_payload(header: dict[str, Any], count: int, limits: Limits) -> None:
    """Check depth, markers and references of the payload; every tensor must be referenced exactly once."""
    referenced = bytearray(count)
    path: list[str] = ["header"]

    def fail(problem: str) -> WireError:
        return WireError(f"{''.join(path)}: {problem}")

    def visit(value: Any, depth: int) -> None:
        if not isinstance(value, (dict, list)):
            return
        if depth > limits.max_depth:
            raise fail(f"nested deeper than max_depth={limits.max_depth}")
        if isinstance(value, list):
            for index, item in enumerate(value):
                path.append(f"[{index}]")
                visit(item, depth + 1)
                path.pop()
            return
        if _TENSOR_KEY in value or _TUPLE_KEY in value:
            if len(value) != 1:
                raise fail(f"an object with a {_TENSOR_KEY!r} or {_TUPLE_KEY!r} key must have no other key")
            if _TUPLE_KEY in value:
                items = value[_TUPLE_KEY]
                if not isinstance(items, list):
                    raise fail(f"{{{_TUPLE_KEY!r}: ...}} must hold a list, got {_json_type(items)}")
                visit(items, depth + 1)
                return
            index = value[_TENSOR_KEY]
            if type(index) is not int:
                raise fail(f"{{{_TENSOR_KEY!r}: {_clip(index)}}}: a tensor reference must be an int index")
            if not 0 <= index < count:
                raise fail(f"{{{_TENSOR_KEY!r}: {_clip(index)}}} refers to no tensor (the table has {count})")
            if referenced[index]:
                raise fail(f"{{{_TENSOR_KEY!r}: {index}}}: tensor {index} is referenced more than once")
            referenced[index] = 1
            return
        for key, item in value.items():
            path.append(f"[{key!r}]")
            visit(item, depth + 1)
            path.pop()

    visit(header, 1)
    if count and not all(referenced):
        raise WireError(f"tensor {referenced.index(0)}: described in the table but never referenced")


def _read_tensor(stream: Fragments, data_start: int, spec: _Spec) -> torch.Tensor:
    """Tensor ``spec`` of a checked frame: a view of its fragment when it may be one, else a copy."""
    start = data_start + spec.offset
    if spec.nbytes >= SHARED_BYTES and not _BIG_ENDIAN:
        found = stream.locate(start, spec.nbytes)
        if found is not None:
            shared = share(found[0], found[1], spec.dtype, spec.shape, spec.nbytes)
            if shared is not None:
                return shared
    out = _new_tensor(spec.shape, spec.dtype)
    if spec.nbytes:
        stream.copy_into(_memory(out.view(-1)), start)
        if _BIG_ENDIAN and out.element_size() > 1:
            raw = out.view(-1).view(torch.uint8)
            raw.copy_(raw.view(-1, out.element_size()).flip(-1).reshape(-1))
    return out


def _new_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The one place decode allocates tensor memory (a seam for the allocation tests); views allocate none."""
    return torch.empty(shape, dtype=dtype)


def _build(value: Any, tensors: list[torch.Tensor]) -> Any:
    """The payload with markers resolved; only called on a header that passed :func:`_check_payload`."""
    if isinstance(value, dict):
        if len(value) == 1:
            if _TENSOR_KEY in value:
                return tensors[value[_TENSOR_KEY]]
            if _TUPLE_KEY in value:
                return tuple(_build(item, tensors) for item in value[_TUPLE_KEY])
        return {key: _build(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [_build(item, tensors) for item in value]
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _clip(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages quote hostile input."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond the digit limit
        text = f"<int of {value.bit_length()} bits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- logging


def describe(data: object) -> str:
    """One line about a frame for logs and error messages: size, payload keys, tensors. Never raises."""
    try:
        return _describe(data)
    except Exception as exc:  # describing must not turn one error into another
        return f"<{type(data).__name__} that cannot be described: {type(exc).__name__}>"


def _describe(data: object) -> str:
    if isinstance(data, str):
        return f"text message of {len(data)} characters (not a frame)"
    try:
        stream = Fragments.of(data)
    except FragmentError:
        return f"{type(data).__name__} (not a frame)"
    size = stream.nbytes
    start = bytes(stream.read(0, min(size, 8)))
    if size < _PREFIX.size or start[:4] != MAGIC:
        return f"not a lightning-split frame: {_size(size)} starting {start!r}"
    (header_len,) = struct.unpack_from("<I", start, 4)
    if _PREFIX.size + header_len > size or header_len > Limits.max_header_bytes:
        return f"frame of {_size(size)} with a bad header length {header_len}"
    try:
        header = json.loads(str(stream.read(_PREFIX.size, _PREFIX.size + header_len), "utf-8"))
    except (ValueError, RecursionError) as exc:
        return f"frame of {_size(size)} with an unreadable header ({type(exc).__name__})"
    if not isinstance(header, dict):
        return f"frame of {_size(size)} whose header is a {_json_type(header)}"
    table = header.get(_TABLE_KEY)
    table = table if isinstance(table, list) else []
    total = sum(e["nbytes"] for e in table if isinstance(e, dict) and type(e.get("nbytes")) is int)
    fields = [_summary(key, value) for key, value in header.items() if key != _TABLE_KEY]
    shown = ", ".join(fields[:12]) + (f", ... ({len(fields)} keys)" if len(fields) > 12 else "")
    return f"frame of {_size(size)}: {{{shown}}}; {len(table)} tensor{'s' * (len(table) != 1)} ({_size(total)})"


def _summary(key: str, value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1 and _TENSOR_KEY in value:
        return f"{key}=<tensor>"
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_TUPLE_KEY), list):
        return f"{key}=({len(value[_TUPLE_KEY])} items)"
    if isinstance(value, list):
        return f"{key}=[{len(value)} items]"
    if isinstance(value, dict):
        return f"{key}={{{len(value)} keys}}"
    return f"{key}={_clip(value, 40)}"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
