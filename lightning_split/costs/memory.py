"""The device's training footprint of each node (``device_mem_bytes``), for a device memory budget.

A node on the device holds, while a step trains: its parameters and their gradients, the
optimizer's state for them, and the activations autograd saves for backward. Without a
measurement the footprint is estimated from tensor sizes::

    device_mem_bytes = param_bytes * (2 + optimizer_slots) + out_bytes

(``optimizer_slots`` tensors of the parameters' size per parameter: 2 for Adam and AdamW, 1 for
SGD with momentum, 0 for plain SGD; 2 when the optimizer is not known, which errs on the side
of fitting.) The node's output stands for what it saves for backward. A parameter read by two
nodes is counted by both, which overestimates: a budget that the estimate meets is met.

On a CUDA device :func:`measured_activation_bytes` measures the saved activations instead:
the memory each node leaves allocated after a forward with autograd on, which is what the
backward keeps alive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx

from lightning_split.graph.capture import TracedModel

__all__ = ["DEFAULT_OPTIMIZER_SLOTS", "estimated_footprint", "measured_activation_bytes", "optimizer_slots"]

DEFAULT_OPTIMIZER_SLOTS = 2
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


def estimated_footprint(param_bytes: int, out_bytes: int, slots: int = DEFAULT_OPTIMIZER_SLOTS) -> int:
    """``param_bytes * (2 + slots) + out_bytes``: parameters, gradients, optimizer state, saved output."""
    return int(param_bytes) * (2 + int(slots)) + int(out_bytes)


def measured_activation_bytes(traced: TracedModel, args: Sequence[Any], device: torch.device) -> dict[str, int] | None:
    """Bytes each node leaves allocated on a CUDA ``device`` after a forward with autograd on (``None`` elsewhere).

    The graph runs node by node (an fx interpreter); the growth of ``torch.cuda.memory_allocated``
    across a node is what its output and the tensors saved for its backward take.
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    gm = traced.graph_module
    names = {info.name for info in traced.nodes}
    grown: dict[str, int] = {}

    class _Meter(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            before = torch.cuda.memory_allocated(device)
            result = super().run_node(node)
            if node.name in names:
                grown[node.name] = max(0, torch.cuda.memory_allocated(device) - before)
            return result

    inputs = [a.to(device) if isinstance(a, torch.Tensor) else a for a in traced.graph_args(*args)]
    with torch.enable_grad():
        _Meter(gm).run(*inputs)
    return grown


def footprints(traced: TracedModel, slots: int, activations: Mapping[str, int] | None = None) -> dict[str, int]:
    """``device_mem_bytes`` per node: measured activations where given, output sizes otherwise."""
    saved = activations or {}
    return {
        info.name: estimated_footprint(info.param_bytes, saved.get(info.name, info.out_bytes), slots)
        for info in traced.nodes
    }
