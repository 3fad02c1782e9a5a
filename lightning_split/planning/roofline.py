"""The roofline estimate of a node's training time on a hardware preset (plain arithmetic, no torch).

One node's forward + backward on one accelerator::

    seconds = max(passes x work / sustained FLOP/s, passes x bytes / sustained bandwidth) + kernels x launch_s

- ``work``: the forward FLOPs (``FlopCounterMode``'s count, or one per output element for the
  nodes it counts none for: elementwise ops, normalisations, pooling).
- ``bytes``: input tensors + output tensor + parameters. The forward reads the inputs and the
  parameters and writes the output; the backward reads the output gradient twice (input and
  weight gradients), the saved inputs and the parameters and writes the input and parameter
  gradients, about twice the forward's traffic. Hence ``passes`` = 3 for training (1 forward +
  2 backward), 1 for inference.
- ``kernels``: 3 in training for a node with parameters (forward, input gradient, weight
  gradient), 2 without; 1 for inference.
- Views (flatten, reshape, getitem, identity, ...) move no data and launch nothing: 0 s.
- The optimiser step is left out, as in the cost model (forward + backward only).

The rates are the preset's sustained ones (:class:`~lightning_split.planning.hardware.Hardware`:
a quarter of the fp32 peak, 70% of the DRAM bandwidth, calibrated on an H200). The FLOP-only
estimate (``max(min_node_s, 3 x work / rate)``) makes elementwise and normalisation nodes nearly
free, although on real hardware they are memory bound; the roofline charges them their traffic,
which is what moves the best cut on bandwidth-poor boards.

:func:`node_seconds` is the formula; ``lightning_split.costs.estimate`` applies it to a traced
model, and ``benchmarks/delay.py`` to its cached unit profiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_split.planning.hardware import Hardware

__all__ = ["TRAINING_PASSES", "is_view", "node_seconds"]

#: Work and traffic of forward + backward as a multiple of the forward's.
TRAINING_PASSES = 3.0

_VIEW_METHODS = {"view", "reshape", "flatten", "size", "squeeze", "unsqueeze", "permute", "transpose", "expand"}
_VIEW_FUNCTIONS = {"torch.flatten", "torch.reshape", "_operator.getitem", "operator.getitem", "torch.squeeze"}
_VIEW_MODULES = {"Flatten", "Identity", "Unflatten"}


def is_view(extra: Mapping[str, Any]) -> bool:
    """Whether a node only re-describes its input (no kernel, no data moved).

    ``extra`` is a profile node's extra fields: ``op`` and ``target`` (as the estimator writes
    them) and, for module calls, ``module_class``.
    """
    op, target = extra.get("op"), extra.get("target")
    if op == "call_method":
        return target in _VIEW_METHODS
    if op == "call_function":
        return target in _VIEW_FUNCTIONS
    if op == "call_module":
        return extra.get("module_class") in _VIEW_MODULES
    return False


def node_seconds(
    work_flops: float,
    bytes_moved: float,
    has_parameters: bool,
    hardware: Hardware,
    training: bool = True,
    view: bool = False,
) -> float:
    """Seconds of one node on ``hardware`` by the roofline (see the module docstring).

    Args:
        work_flops: the node's forward FLOPs (one per output element when none are counted).
        bytes_moved: the forward's traffic: input + output + parameter bytes.
        has_parameters: whether the node has parameters (a third kernel in training).
        hardware: the preset whose sustained rates and launch cost apply.
        training: forward + backward (``True``) or the forward alone.
        view: the node is a view (costs nothing).
    """
    if view:
        return 0.0
    passes = TRAINING_PASSES if training else 1.0
    compute = passes * work_flops / hardware.compute_flops_per_s
    memory = passes * bytes_moved / hardware.memory_bytes_per_s
    kernels = (3 if has_parameters else 2) if training else 1
    return max(compute, memory) + kernels * hardware.launch_s
