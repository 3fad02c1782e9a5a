"""Measured device training footprints (``device_mem_bytes``), for a device memory budget.

The estimate from tensor sizes is :mod:`lightning_split.planning.memory`'s: a node's footprint
is ``(2 + optimizer_slots) x param_bytes + saved``, ``saved`` estimated as its output. Where a
budget has to be met, :func:`measured_saved_bytes` measures ``saved`` instead: the tensors
autograd saves for each node's backward, on one forward (any device), and :func:`footprints`
puts them into the same formula. :func:`optimizer_slots` reads the slots off the training's
optimizers (2 for Adam, 1 for SGD with momentum, 0 for plain SGD).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx

from lightning_split.graph.capture import TracedModel
from lightning_split.planning.memory import DEFAULT_OPTIMIZER_SLOTS, node_training_bytes

__all__ = ["footprints", "measured_saved_bytes", "optimizer_slots"]
_SLOTS = {"Adam": 2, "AdamW": 2, "NAdam": 2, "RAdam": 2, "Adamax": 2, "Adagrad": 1, "RMSprop": 1, "Adadelta": 2}


def optimizer_slots(optimizers: Sequence[Any] = ()) -> int:
    """Parameter-sized state tensors per parameter of ``optimizers`` (the most of them; default 2)."""
    slots = []
    for optimizer in optimizers:
        raw = getattr(optimizer, "_optimizer", optimizer)
        name = type(raw).__name__
        if name == "SGD":
            slots.append(int(any(group.get("momentum", 0) for group in raw.param_groups)))
        else:
            slots.append(_SLOTS.get(name, DEFAULT_OPTIMIZER_SLOTS))
    return max(slots) if slots else DEFAULT_OPTIMIZER_SLOTS


def measured_saved_bytes(traced: TracedModel, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, int]:
    """Bytes of the tensors autograd saves for backward in each node, measured on one forward (any device).

    The graph runs node by node (an fx interpreter) under ``saved_tensors_hooks``: every tensor
    a node's forward saves for its backward is counted once (by address and size), parameters excepted
    (they are ``param_bytes``). The module's buffers (BatchNorm statistics) and the random
    state are restored afterwards, so the measurement leaves training exactly as it was.
    """
    gm = traced.graph_module
    names = {info.name for info in traced.nodes}
    params = {p.untyped_storage().data_ptr() for p in gm.parameters()}
    saved: dict[str, dict[tuple[int, int], int]] = {}
    current: list[str] = [""]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in params:
            key = (tensor.data_ptr(), tensor.numel())
            saved.setdefault(current[0], {})[key] = tensor.numel() * tensor.element_size()
        return tensor

    class _Meter(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            current[0] = node.name
            return super().run_node(node)

    buffers = {key: value.detach().clone() for key, value in gm.named_buffers()}
    inputs = traced.graph_args(*args, **kwargs)
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), hooks:
        _Meter(gm).run(*inputs)
    with torch.no_grad():
        for key, value in gm.named_buffers():
            value.copy_(buffers[key])
    return {name: sum(saved.get(name, {}).values()) for name in names}


def footprints(traced: TracedModel, slots: int, activations: Mapping[str, int] | None = None) -> dict[str, int]:
    """``device_mem_bytes`` per node: measured activations where given, output sizes otherwise."""
    saved = activations or {}
    return {
        info.name: node_training_bytes(info.param_bytes, saved.get(info.name, info.out_bytes), slots)
        for info in traced.nodes
    }
