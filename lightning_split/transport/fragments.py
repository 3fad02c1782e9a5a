"""Frames as fragments: tensor bytes go from torch to the socket, and back, without a copy of ours.

A :mod:`~lightning_split.transport.wire` frame is one byte stream (its layout is the wire
module's, unchanged). This module only changes how that stream is held in memory:

- :class:`Frame` is an encoded frame as a sequence of *fragments*: the prefix and header
  (and the bytes of small tensors) in one ``bytes``, and each large tensor's own memory as
  a memoryview. websockets sends the fragments as the frames of one message, so the bytes on
  the wire are exactly those of :func:`~lightning_split.transport.wire.encode`, and no one
  joins them first.
- :class:`Fragments` reads a received message, one ``bytes`` or the list of its fragments,
  as one byte stream: :func:`~lightning_split.transport.wire.decode` checks the stream as
  before, then makes each large tensor that lies inside one fragment a view of it.

**A frame holds references, not copies.** Its bytes are those of its tensors when it is
sent, not when it was encoded. Whoever keeps a frame past the moment its tensors may change
keeps :meth:`Frame.materialize` instead (one copy: what every frame cost before). The rule
for each frame the transport keeps is stated where it is kept
(:class:`~lightning_split.transport.protocol.Sequencer`,
:class:`~lightning_split.transport.protocol.DeviceProtocol`).
"""

from __future__ import annotations

import bisect
import ctypes
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "MAX_FRAGMENTS",
    "SHARED_BYTES",
    "Buffer",
    "FragmentError",
    "Fragments",
    "Frame",
    "assemble",
    "memory_of",
    "message_nbytes",
    "share",
]

Buffer = bytes | bytearray | memoryview

#: tensors of at least this many bytes are sent as their own fragment and may be received as a
#: view; smaller ones are copied (cheap), so a small value kept for long (a random state, a
#: scalar) never pins a large message in memory.
SHARED_BYTES = 64 * 2**10
#: at most this many fragments per frame (websockets refuses messages of more than 4096); the
#: tensors beyond it are copied into the header fragment's neighbours.
MAX_FRAGMENTS = 1024


class FragmentError(ValueError):
    """A message that is not binary data (text, or something without bytes)."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One encoded frame: its fragments, the tensors they point into, its size.

    It behaves as its bytes where that is cheap: ``len(frame)`` is its size in bytes,
    ``bytes(frame)`` joins it, and ``==`` compares contents. Send it with ``send(frame.message)``.

    Attributes:
        fragments: the byte stream in order; memoryviews point into ``tensors``.
        tensors: flat uint8 views of the tensors whose memory the fragments point into: they
            keep that memory alive (a memoryview of a tensor's memory does not).
        nbytes: the size of the frame in bytes.
    """

    fragments: tuple[Buffer, ...]
    tensors: tuple[torch.Tensor, ...] = ()
    nbytes: int = -1

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            object.__setattr__(self, "nbytes", sum(memoryview(part).nbytes for part in self.fragments))

    @classmethod
    def of(cls, data: Buffer) -> Frame:
        """A frame of one fragment (a frame that was encoded as bytes, or received)."""
        return cls((data,))

    @property
    def message(self) -> bytes | list[Buffer]:
        """What to hand websockets' ``send``: one bytes object, or the fragments of one fragmented message."""
        if len(self.fragments) == 1 and isinstance(self.fragments[0], bytes):
            return self.fragments[0]
        return list(self.fragments)

    def materialize(self) -> Frame:
        """This frame as a snapshot: its bytes copied now when it points into tensors, else itself."""
        return Frame.of(bytes(self)) if self.tensors else self

    def __bytes__(self) -> bytes:
        if len(self.fragments) == 1:
            return bytes(self.fragments[0])
        return b"".join(self.fragments)

    def __len__(self) -> int:
        return self.nbytes

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Frame):
            return self.nbytes == other.nbytes and bytes(self) == bytes(other)
        if isinstance(other, (bytes, bytearray, memoryview)):
            return self.nbytes == memoryview(other).nbytes and bytes(self) == bytes(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Frame({self.nbytes} bytes in {len(self.fragments)} fragments, {len(self.tensors)} tensors shared)"


def assemble(head: bytes, table: Sequence[dict[str, Any]], flats: Sequence[torch.Tensor]) -> Frame:
    """The frame of a prefix and header, a tensor table and each tensor's wire bytes (flat uint8 CPU tensors).

    Each tensor of at least :data:`SHARED_BYTES` (up to :data:`MAX_FRAGMENTS` fragments) is
    a fragment of its own, a view of its memory; the bytes around it (prefix, header,
    padding, small tensors) are joined into the fragments between.
    """
    fragments: list[Buffer] = []
    shared: list[torch.Tensor] = []
    pending: list[Buffer] = [head]  # small parts, joined into one fragment
    position = 0
    for entry, flat in zip(table, flats):
        if entry["offset"] > position:
            pending.append(bytes(entry["offset"] - position))
        nbytes = entry["nbytes"]
        if nbytes >= SHARED_BYTES and len(fragments) + 3 <= MAX_FRAGMENTS:
            if pending:
                fragments.append(b"".join(pending))
                pending = []
            fragments.append(memory_of(flat))
            shared.append(flat)
        elif nbytes:
            pending.append(memory_of(flat))
        position = entry["offset"] + nbytes
    if pending:
        fragments.append(b"".join(pending))
    return Frame(tuple(fragments), tuple(shared), len(head) + position)


def memory_of(flat: torch.Tensor) -> memoryview:
    """The bytes of a flat contiguous CPU tensor as a writable memoryview; the tensor must outlive it.

    Not ``Tensor.numpy()``: that would mark the tensor's storage (the caller's, on encode)
    as non-resizable for good.
    """
    nbytes = flat.numel() * flat.element_size()
    return memoryview((ctypes.c_char * nbytes).from_address(flat.data_ptr())).cast("B")


def message_nbytes(data: object) -> int:
    """The size in bytes of a message: a frame, one bytes-like object, or a list of fragments."""
    if isinstance(data, Frame):
        return data.nbytes
    if isinstance(data, (list, tuple)):
        return sum(memoryview(part).nbytes for part in data)
    return memoryview(data).nbytes  # type: ignore[arg-type]


class Fragments:
    """A received message read as one byte stream, wherever its fragment boundaries fall.

    Built by :meth:`of` from a frame, a bytes-like object or a sequence of them; empty
    fragments are dropped. Reads that fall inside one fragment are views; reads across
    fragments are copies (the caller bounds their size first).
    """

    def __init__(self, parts: list[memoryview]) -> None:
        self.parts = parts
        self.starts: list[int] = []
        position = 0
        for part in parts:
            self.starts.append(position)
            position += part.nbytes
        self.nbytes = position

    @classmethod
    def of(cls, data: object) -> Fragments:
        """The fragments of ``data``.

        Raises:
            FragmentError: ``data`` is text, or neither bytes-like nor a sequence of bytes-like objects.
        """
        if isinstance(data, Frame):
            items: Sequence[object] = data.fragments
        elif isinstance(data, (list, tuple)):
            items = data
        else:
            items = (data,)
        parts = []
        for item in items:
            if isinstance(item, str):
                raise FragmentError("expected a binary message (bytes), got text (str)")
            try:
                view = memoryview(item)  # type: ignore[arg-type]
                view = view if view.format == "B" and view.ndim == 1 else view.cast("B")
            except TypeError as exc:
                raise FragmentError(
                    f"expected a contiguous bytes-like message, got {type(item).__name__}: {exc}"
                ) from None
            if view.nbytes:
                parts.append(view)
        return cls(parts)

    def _find(self, position: int) -> int:
        """The index of the fragment that holds byte ``position`` (``0 <= position < nbytes``)."""
        return bisect.bisect_right(self.starts, position) - 1

    def read(self, start: int, stop: int) -> memoryview | bytes:
        """Bytes ``[start, stop)``: a view when they lie in one fragment, else a copy."""
        if start >= stop:
            return b""
        index = self._find(start)
        offset = start - self.starts[index]
        part = self.parts[index]
        if offset + (stop - start) <= part.nbytes:
            return part[offset : offset + (stop - start)]
        out = bytearray(stop - start)
        self.copy_into(memoryview(out), start)
        return bytes(out)

    def locate(self, start: int, nbytes: int) -> tuple[memoryview, int] | None:
        """``(fragment, offset)`` when bytes ``[start, start + nbytes)`` lie in one fragment, else ``None``."""
        if nbytes <= 0 or start + nbytes > self.nbytes:
            return None
        index = self._find(start)
        offset = start - self.starts[index]
        part = self.parts[index]
        return (part, offset) if offset + nbytes <= part.nbytes else None

    def copy_into(self, target: memoryview, start: int) -> None:
        """Copy ``target.nbytes`` bytes from ``start`` on into ``target`` (the caller checked the range)."""
        done, total = 0, target.nbytes
        index = self._find(start) if total else len(self.parts)
        while done < total:
            part = self.parts[index]
            offset = start + done - self.starts[index]
            count = min(part.nbytes - offset, total - done)
            target[done : done + count] = part[offset : offset + count]
            done += count
            index += 1


_quiet = threading.Lock()
_warned = False


def share(
    part: memoryview, offset: int, dtype: torch.dtype, shape: tuple[int, ...], nbytes: int
) -> torch.Tensor | None:
    """A tensor over ``part[offset : offset + nbytes]`` (it keeps ``part`` alive), or ``None`` if misaligned.

    The tensor is a base tensor (not a view of another), contiguous, with ``dtype`` and ``shape``.
    torch warns, once per process, that a read-only buffer (a received ``bytes``) gives a
    writable tensor: the message is held nowhere else, so that is what we want; the first
    call says so under a lock, later calls cannot warn.
    """
    global _warned
    if _warned or not part.readonly:
        raw = torch.frombuffer(part, dtype=torch.uint8, count=nbytes, offset=offset)
    else:
        with _quiet, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            raw = torch.frombuffer(part, dtype=torch.uint8, count=nbytes, offset=offset)
            _warned = True
    if raw.data_ptr() % dtype.itemsize:
        return None
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return torch.empty(0, dtype=dtype).set_(raw.untyped_storage(), 0, shape, tuple(reversed(strides)))
