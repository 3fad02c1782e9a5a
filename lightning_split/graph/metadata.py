"""Tensor metadata of a node's output: the one encoding of ``NodeInfo.out_meta`` and its one decoder.

The recording run describes what each cost node outputs with :func:`describe`: a plain,
comparable structure whose leaves are ``("tensor", shape, dtype)`` for a tensor and
``("value", type name)`` for anything else, inside the same tuples, lists and dicts the node
returned. That plain form is what :attr:`~lightning_split.graph.nodes.NodeInfo.out_meta`
holds (it prints and compares as it is).

Code that reads it goes through :func:`decode`, which turns the leaves into
:class:`TensorMeta` and :class:`ValueMeta` (containers stay tuples, lists and dicts), so no
caller tests tuple lengths and tags by hand; :func:`tensors` and :func:`text` are the two
readings every consumer needs (the tensors in order, and a short human-readable form).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["VALUE_BYTES", "TensorMeta", "ValueMeta", "decode", "describe", "tensors", "text"]

VALUE_BYTES = 8  # what a non-tensor output (int, float, size entry, None) is counted as


@dataclass(frozen=True)
class TensorMeta:
    """A tensor leaf: its shape as traced (the first dimension is the example's batch) and dtype.

    Attributes:
        shape: the traced shape.
        dtype: ``str(torch.dtype)``, e.g. ``"torch.float32"``.
    """

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar)."""
        return math.prod(self.shape)

    def text(self) -> str:
        """``"torch.float32[2,16,8,8]"``."""
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class ValueMeta:
    """A non-tensor leaf (an int, a ``torch.Size``, ``None``, ...), known by its type name only."""

    type_name: str


def describe(value: Any) -> tuple[Any, int]:
    """The plain metadata of ``value`` and its size in bytes (the encoder of ``out_meta``).

    Tensors count their storage; each non-tensor value counts :data:`VALUE_BYTES` (a
    ``torch.Size`` that many per dimension); containers sum their items.
    """
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype)), value.numel() * value.element_size()
    if isinstance(value, torch.Size):
        return ("value", "Size"), VALUE_BYTES * max(1, len(value))
    if isinstance(value, (tuple, list)):
        parts = [describe(item) for item in value]
        metas = [meta for meta, _ in parts]
        return (tuple(metas) if isinstance(value, tuple) else metas), sum(size for _, size in parts)
    if isinstance(value, dict):
        parts_d = {key: describe(item) for key, item in value.items()}
        return {key: meta for key, (meta, _) in parts_d.items()}, sum(size for _, size in parts_d.values())
    return ("value", type(value).__name__), VALUE_BYTES


def decode(meta: Any) -> Any:
    """The structure of ``meta`` with :class:`TensorMeta` / :class:`ValueMeta` leaves.

    Tuples, lists and dicts are kept as such. Already decoded metadata is returned as it is;
    anything unrecognised (``None``: a node without a record) becomes a :class:`ValueMeta`
    named by its ``str``.
    """
    if isinstance(meta, (TensorMeta, ValueMeta)):
        return meta
    if isinstance(meta, (tuple, list)):
        if len(meta) == 3 and isinstance(meta[0], str) and meta[0] == "tensor":
            return TensorMeta(tuple(int(d) for d in meta[1]), str(meta[2]))
        if len(meta) == 2 and isinstance(meta[0], str) and meta[0] == "value":
            return ValueMeta(str(meta[1]))
        return type(meta)(decode(item) for item in meta)
    if isinstance(meta, dict):
        return {key: decode(item) for key, item in meta.items()}
    return ValueMeta(str(meta))


def tensors(meta: Any) -> Iterator[TensorMeta]:
    """The tensor leaves of ``meta`` (plain or decoded), depth first in the output's order."""
    decoded = decode(meta)
    if isinstance(decoded, TensorMeta):
        yield decoded
    elif isinstance(decoded, (tuple, list, dict)):
        for item in decoded.values() if isinstance(decoded, dict) else decoded:
            yield from tensors(item)


def text(meta: Any) -> str:
    """Short readable form: ``"torch.float32[2,8]"``, ``"(torch.int64[2], int)"``, ``"{k: ...}"``."""
    decoded = decode(meta)
    if isinstance(decoded, TensorMeta):
        return decoded.text()
    if isinstance(decoded, ValueMeta):
        return decoded.type_name
    if isinstance(decoded, dict):
        return "{" + ", ".join(f"{key}: {text(item)}" for key, item in decoded.items()) + "}"
    return "(" + ", ".join(text(item) for item in decoded) + ")"
