"""Nodes that read only a tensor's metadata, and the scalar arithmetic on what they read.

``x.shape``, ``x.ndim``, ``x.size(1)``, ``x.dim()`` (and ``aten.sym_size`` in exported graphs)
need the tensor's metadata, never its data. Placed on the other side of a cut than the
tensor, such a node would make the whole tensor cross: timm's ``BatchNormAct2d`` asserts
``x.ndim == 4`` and ViT's patch embedding reads ``B, C, H, W = x.shape``, and a cut placed
by module path put those checks of the device's activations on the server (efficientnet_b0
cut at ``blocks.3`` sent 3 MB up per step for a 10 KB cut tensor). :func:`metadata_nodes`
finds these nodes so that a placement computes them where the tensor is and sends the
resulting ints (a handful of bytes) instead.

A node counts when it is a metadata read, or a call of a plain Python function (``operator``,
``builtins``, ``math``, ``torch._assert``) whose node inputs all count. Reads of ``dtype``
and ``device`` do not: those values cannot travel on the wire.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Iterable

import torch
from torch import fx

__all__ = ["metadata_nodes", "with_metadata_nodes"]

_ATTRIBUTES = frozenset({"shape", "ndim", "is_cuda", "requires_grad", "is_sparse"})
_METHODS = frozenset({"size", "dim", "numel", "nelement", "stride", "is_contiguous", "is_floating_point"})
_SCALAR_MODULES = (operator, builtins, math)


def _aten_readers() -> tuple[object, ...]:
    aten = torch.ops.aten
    return (aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int, aten.sym_storage_offset.default)


def _is_reader(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _METHODS
    if node.op != "call_function":
        return False
    if node.target is builtins.getattr:
        return len(node.args) >= 2 and node.args[1] in _ATTRIBUTES
    if node.target in (torch.numel, builtins.len):
        return True
    return node.target in _aten_readers()


def _is_scalar_function(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    target = node.target
    if target in (torch._assert, torch.sym_int, torch.sym_float, torch.sym_max, torch.sym_min, torch.sym_not):
        return True
    module = getattr(target, "__module__", None) or ""
    return module in {m.__name__ for m in _SCALAR_MODULES} or module == "_operator" or target is builtins.getattr


def metadata_nodes(gm: fx.GraphModule) -> set[str]:
    """Names of the nodes that read only metadata of tensors, or compute on such reads alone."""
    found: set[str] = set()
    for node in gm.graph.nodes:
        inputs = [n for n in node.all_input_nodes if n.op != "get_attr"]
        if not inputs or any(n.op == "get_attr" for n in node.all_input_nodes):
            continue
        if _is_reader(node) or (_is_scalar_function(node) and all(n.name in found for n in inputs)):
            found.add(node.name)
    return found


def with_metadata_nodes(gm: fx.GraphModule, device: Iterable[str]) -> set[str]:
    """``device`` plus the nodes that belong with it, in graph order.

    Those are the metadata nodes whose inputs are all computed on the device, and the dead
    ends among its values' readers: nodes nothing uses (a buffer update such as
    ``num_batches_tracked.add_(1)``, an assertion) whose inputs are all on the device and whose
    parameters and buffers no node elsewhere reads.
    """
    placed = set(device)
    readers = metadata_nodes(gm)
    for node in gm.graph.nodes:
        inputs = [n for n in node.all_input_nodes if n.op != "get_attr"]
        if node.name in placed or not all(n.name in placed for n in inputs):
            continue
        if node.name in readers or (node.op in _CALLS and not node.users and _state_stays(node, placed)):
            placed.add(node.name)
    return placed


_CALLS = ("call_function", "call_method", "call_module")


def _state_stays(node: fx.Node, placed: set[str]) -> bool:
    """Whether every other reader of the get_attr values ``node`` reads is on the device already."""
    attrs = [n for n in node.all_input_nodes if n.op == "get_attr"]
    return node.op != "call_module" and all(user is node or user.name in placed for a in attrs for user in a.users)
