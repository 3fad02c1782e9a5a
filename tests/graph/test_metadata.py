"""The one encoder and decoder of a node's output metadata (``NodeInfo.out_meta``)."""

from __future__ import annotations

import torch

from lightning_split.graph.metadata import VALUE_BYTES, TensorMeta, ValueMeta, decode, describe, tensors, text


def test_describe_counts_tensor_storage_and_values():
    value = (torch.zeros(2, 3), [torch.zeros(4, dtype=torch.int64), 7], {"size": torch.Size([2, 3])})
    meta, size = describe(value)
    assert meta == (
        ("tensor", (2, 3), "torch.float32"),
        [("tensor", (4,), "torch.int64"), ("value", "int")],
        {"size": ("value", "Size")},
    )
    assert size == 2 * 3 * 4 + 4 * 8 + VALUE_BYTES + 2 * VALUE_BYTES


def test_decode_keeps_containers_and_types_the_leaves():
    meta, _ = describe((torch.zeros(2, 3), [None, {"k": torch.ones(())}]))
    decoded = decode(meta)
    assert decoded == (
        TensorMeta((2, 3), "torch.float32"),
        [ValueMeta("NoneType"), {"k": TensorMeta((), "torch.float32")}],
    )
    assert decode(decoded) == decoded, "decoding is idempotent"
    assert decode(None) == ValueMeta("None"), "a node without a record"


def test_tensors_in_order_and_text():
    meta, _ = describe({"a": (torch.zeros(2, 8), 3), "b": torch.zeros(5, dtype=torch.int64)})
    assert [t.shape for t in tensors(meta)] == [(2, 8), (5,)]
    assert sum(t.numel for t in tensors(meta)) == 21
    assert text(meta) == "{a: (torch.float32[2,8], int), b: torch.int64[5]}"
    assert list(tensors(("value", "int"))) == [] and text(("value", "int")) == "int"
