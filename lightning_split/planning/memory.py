"""Device training memory of a placement, estimated from tensor sizes (plain data, no torch).

Training the device part holds, for one step:

- **parameters**: ``param_bytes`` of each device node (its parameters and buffers);
- **gradients**: one gradient per parameter, the same bytes again (buffers have none, so this
  slightly overcounts normalisation layers' running statistics);
- **optimizer state**: ``optimizer_slots`` more copies: 0 for plain SGD, 1 for SGD with
  momentum, 2 for Adam and AdamW (first and second moments), the default;
- **saved activations**: what autograd keeps for the backward, estimated as each device node's
  output tensor (``out_bytes``; the model inputs included, views excluded, since they share
  their input's storage). Most ops save their input or their output, and every input is some
  node's output, so this counts each saved tensor about once.

So one node's footprint is ``(2 + optimizer_slots) x param_bytes + saved_bytes``
(:func:`node_training_bytes`); the estimator writes it to the profile as ``device_mem_bytes``,
the field a device memory budget bounds. :func:`device_memory` sums a placement's device nodes
into a :class:`DeviceMemory`; where the profile's ``device_mem_bytes`` were measured instead, the
total is theirs and the activations are what the parameter terms leave of it.

It is an estimate: allocator slack, workspace buffers and the framework's own footprint are not
counted; a measured profile is better where torch can measure it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lightning_split.planning.profile import NodeCost, Profile
from lightning_split.planning.roofline import is_view

__all__ = ["DEFAULT_OPTIMIZER_SLOTS", "OPTIMIZER_SLOTS", "DeviceMemory", "device_memory", "node_training_bytes"]

#: Optimizer state per parameter, in copies of the parameter, by optimizer name.
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}
#: Adam's two moments: the largest of the common optimizers, so the estimate errs high.
DEFAULT_OPTIMIZER_SLOTS = 2


def saved_bytes(node: NodeCost) -> int:
    """Activation bytes autograd keeps for the node: its output, or nothing for a view."""
    return 0 if node.kind != "input" and is_view(node.extra) else node.out_bytes


def node_training_bytes(param_bytes: int, saved: int, optimizer_slots: int = DEFAULT_OPTIMIZER_SLOTS) -> int:
    """One node's training footprint: parameters, gradients, optimizer state and saved activations."""
    return (2 + optimizer_slots) * param_bytes + saved


@dataclass(frozen=True)
class DeviceMemory:
    """A placement's device training memory, in bytes, by what holds it.

    Attributes:
        parameters: parameters and buffers of the device nodes.
        gradients: their gradients.
        optimizer_state: the optimizer's state for them.
        activations: activations saved for the backward.
        optimizer_slots: the optimizer state's copies per parameter that were assumed.
        measured: whether the total is the profile's ``device_mem_bytes`` rather than the estimate.
    """

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    optimizer_slots: int = DEFAULT_OPTIMIZER_SLOTS
    measured: bool = False

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state + self.activations

    def to_json(self) -> dict[str, Any]:
        return {
            "total_bytes": self.total,
            "parameters_bytes": self.parameters,
            "gradients_bytes": self.gradients,
            "optimizer_state_bytes": self.optimizer_state,
            "activations_bytes": self.activations,
            "optimizer_slots": self.optimizer_slots,
            "estimated": not self.measured,
        }


def device_memory(
    profile: Profile, device: Iterable[str], optimizer_slots: int = DEFAULT_OPTIMIZER_SLOTS
) -> DeviceMemory:
    """The device training memory of placing ``device`` (node names) on the device.

    Parameters come from the nodes' ``param_bytes`` (0 where unknown). When every device node
    has ``device_mem_bytes`` the total is their sum, as a memory budget counts it.
    """
    on_device = set(device)
    nodes = [node for node in profile.nodes if node.name in on_device]
    params = sum(node.param_bytes or 0 for node in nodes)
    activations = sum(saved_bytes(node) for node in nodes)
    recorded = [node.device_mem_bytes for node in nodes]
    measured = bool(nodes) and all(size is not None for size in recorded)
    if measured:
        total = sum(size or 0 for size in recorded)
        estimate = sum(node_training_bytes(node.param_bytes or 0, saved_bytes(node), optimizer_slots) for node in nodes)
        measured = total != estimate
        activations = max(0, total - (2 + optimizer_slots) * params) if measured else activations
    return DeviceMemory(params, params, optimizer_slots * params, activations, optimizer_slots, measured)
