"""The session's codec applied to the tensors that cross the cut, in the messages' wire form.

Four fields carry the tensors of a training step: ``forward.values`` (cut activations up),
``reply to forward.outputs`` (model outputs down), ``backward.grads`` (output gradients up)
and ``reply to backward.grads`` (cut gradients down). :func:`pack` rewrites the float tensors
of that field of a message's wire dict with the session's :class:`~lightning_split.transport.codecs.Codec`
and adds the key ``"coded"``: one entry per tensor of the field, in the order a depth-first
walk meets them (lists, tuples, dict values in order), ``null`` for a tensor sent as it is and
``{"dtype": "float32", ...codec fields}`` for a coded one. :func:`unpack` checks that table and
decodes, so the typed message never sees a coded tensor. With the ``none`` codec nothing is
rewritten and no ``"coded"`` key is written: the bytes are those of a session without codecs.

Both sides time what they encode and decode (:class:`CodecClock`), so the cost of a codec is
measured, not assumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_split.transport import messages
from lightning_split.transport.codecs import CODED_DTYPES, Codec
from lightning_split.transport.errors import ProtocolError
from lightning_split.transport.wire import DTYPES, dtype_name

__all__ = ["CODED_KEY", "CodecClock", "coded_field", "pack", "unpack"]

CODED_KEY = "coded"
_FIELDS: dict[type[messages.Message], str] = {
    messages.Forward: "values",
    messages.Backward: "grads",
    messages.ForwardReply: "outputs",
    messages.BackwardReply: "grads",
}
_OP_FIELDS = {cls.name: name for cls, name in _FIELDS.items() if issubclass(cls, messages.Op)}
_DECODED = frozenset(dtype_name(dtype) for dtype in CODED_DTYPES)


@dataclass
class CodecClock:
    """Seconds spent encoding and decoding, and the raw bytes of the tensors coded."""

    encode_s: float = 0.0
    decode_s: float = 0.0
    raw_bytes: int = 0
    tensors: int = 0


def coded_field(message: type[messages.Message] | None) -> str | None:
    """The field of ``message`` whose tensors the codec applies to (``None``: it carries none)."""
    return _FIELDS.get(message) if message is not None else None


def op_field(value: Any) -> str | None:
    """The coded field of an op's wire dict (by its ``"op"`` key), or ``None``."""
    name = value.get("op") if isinstance(value, dict) else None
    return _OP_FIELDS.get(name) if isinstance(name, str) else None


def pack(value: dict[str, Any], field: str | None, codec: Codec, clock: CodecClock | None = None) -> dict[str, Any]:
    """``value`` (a message's wire dict) with the float tensors of ``field`` coded and the ``"coded"`` table."""
    if field is None or field not in value or codec.name == "none":
        return value
    entries: list[dict[str, Any] | None] = []
    started = time.perf_counter()

    def code(tensor: Tensor) -> Tensor:
        if not codec.applies(tensor):
            entries.append(None)
            return tensor
        data, fields = codec.encode(tensor)
        entries.append({"dtype": dtype_name(tensor.dtype), **fields})
        if clock is not None:
            clock.raw_bytes += tensor.numel() * tensor.element_size()
            clock.tensors += 1
        return data

    coded = _map_tensors(value[field], code)
    if clock is not None:
        clock.encode_s += time.perf_counter() - started
    if not any(entry is not None for entry in entries):
        return value
    return {**value, field: coded, CODED_KEY: entries}


def unpack(value: Any, field: str | None, codec: Codec, clock: CodecClock | None = None) -> Any:
    """A received wire dict with the ``"coded"`` table checked, removed and its tensors decoded.

    Raises:
        ProtocolError: the table is malformed, does not match the field's tensors, or a codec
            field is wrong (the codec says which); ``"coded"`` on a message that carries none.
    """
    if not isinstance(value, dict) or CODED_KEY not in value:
        return value
    entries = value[CODED_KEY]
    if field is None or field not in value:
        raise ProtocolError(f"field {CODED_KEY!r} on a message without coded tensors", CODED_KEY)
    if not isinstance(entries, list):
        raise ProtocolError(f"field {CODED_KEY!r} must be a list, got {type(entries).__name__}", CODED_KEY)
    started = time.perf_counter()
    position = iter(range(len(entries) + 1))

    def decode(data: Tensor) -> Tensor:
        index = next(position)
        if index >= len(entries):
            raise ProtocolError(f"field {CODED_KEY!r} has {len(entries)} entries for more tensors", CODED_KEY)
        entry = entries[index]
        if entry is None:
            return data
        if not isinstance(entry, dict) or entry.get("dtype") not in _DECODED:
            raise ProtocolError(
                f"field {CODED_KEY!r} entry {index} must be null or an object with 'dtype' one of "
                f"{', '.join(sorted(_DECODED))}",
                CODED_KEY,
            )
        fields = {key: item for key, item in entry.items() if key != "dtype"}
        decoded = codec.decode(data, fields, DTYPES[entry["dtype"]])
        if clock is not None:
            clock.raw_bytes += decoded.numel() * decoded.element_size()
            clock.tensors += 1
        return decoded

    decoded = _map_tensors(value[field], decode)
    if next(position) != len(entries):
        raise ProtocolError(f"field {CODED_KEY!r} has {len(entries)} entries for fewer tensors", CODED_KEY)
    if clock is not None:
        clock.decode_s += time.perf_counter() - started
    rest = {key: item for key, item in value.items() if key != CODED_KEY}
    return {**rest, field: decoded}


def _map_tensors(value: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """``value`` with each tensor replaced by ``function(tensor)``, depth first, containers rebuilt."""
    if isinstance(value, Tensor):
        return function(value)
    if isinstance(value, list):
        return [_map_tensors(item, function) for item in value]
    if isinstance(value, tuple):
        return tuple(_map_tensors(item, function) for item in value)
    if isinstance(value, Mapping):
        return {key: _map_tensors(item, function) for key, item in value.items()}
    return value


def measure_codec_s_per_byte(codec: Codec, numel: int = 1 << 15, repeats: int = 10) -> float:
    """Seconds to encode and decode one raw float32 byte with ``codec`` here (best of ``repeats``)."""
    if codec.name == "none":
        return 0.0
    tensor = torch.randn(64, max(1, numel // 64))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data, fields = codec.encode(tensor)
        codec.decode(data, fields, tensor.dtype)
        best = min(best, time.perf_counter() - started)
    return best / (tensor.numel() * tensor.element_size())
