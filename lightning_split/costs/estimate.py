"""Estimated profiles: node costs from FLOPs, with no hardware at hand.

:func:`estimate_profile` turns a :class:`~lightning_split.graph.capture.TracedModel` into a
:class:`~lightning_split.planning.profile.Profile` by dividing each node's work by an effective
throughput for the device and for the server. It is what ``lightning-split plan --model``
uses when nothing has been measured; a measured profile (``lightning-split profile``)
replaces it when accuracy matters.

Cost of one node for one training batch (forward + backward)::

    work   = FLOPs counted by FlopCounterMode, or one FLOP per output element when none
             were counted (elementwise ops, normalisations, pooling, views) so nothing is free
    time   = max(min_node_s, (1 + backward_factor) * work / throughput)

``backward_factor = 2`` is the usual rule of thumb: the backward pass of a matmul or a
convolution computes two products of the forward's size (gradients of input and of weight).
``min_node_s`` is a floor per node standing for launch/dispatch overhead, which dominates tiny
ops on real hardware. Placeholders (model inputs) cost nothing on either side.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from lightning_split.costs.memory import estimated_footprint
from lightning_split.graph.capture import TracedModel
from lightning_split.graph.metadata import tensors
from lightning_split.planning.profile import Link, NodeCost, Profile

__all__ = [
    "DEFAULT_DEVICE_GFLOPS",
    "DEFAULT_MIN_NODE_S",
    "DEFAULT_SERVER_GFLOPS",
    "estimate_profile",
    "example_inputs_for",
    "model_from_path",
]

# Jetson Nano class device: 128 Maxwell CUDA cores at 921 MHz give 472 GFLOP/s fp16 peak and
# 236 GFLOP/s fp32 peak (NVIDIA Jetson Nano datasheet). Eager fp32 training reaches a fraction of
# peak (small batches, memory-bound layers, Python overhead); about 20% of the fp32 peak is a
# realistic sustained figure, hence 50 GFLOP/s.
DEFAULT_DEVICE_GFLOPS = 50.0

# GPU edge server: an NVIDIA T4 (8.1 TFLOP/s fp32 peak) or a consumer RTX-class GPU sustains
# roughly 5 TFLOP/s on eager fp32 training of convolutional and transformer models.
DEFAULT_SERVER_GFLOPS = 5000.0

# One op's forward + backward cannot cost less than a couple of kernel launches plus framework
# dispatch: about 10 microseconds on either side.
DEFAULT_MIN_NODE_S = 1e-5


def estimate_profile(
    traced: TracedModel,
    link: Link,
    device_gflops: float = DEFAULT_DEVICE_GFLOPS,
    server_gflops: float = DEFAULT_SERVER_GFLOPS,
    backward_factor: float = 2.0,
    min_node_s: float = DEFAULT_MIN_NODE_S,
) -> Profile:
    """Estimate forward+backward seconds per node from FLOPs and effective throughputs.

    Args:
        traced: the traced model (its recording run gives FLOPs and output sizes).
        link: the network to put in the profile.
        device_gflops: effective GFLOP/s of the device.
        server_gflops: effective GFLOP/s of the server.
        backward_factor: backward work as a multiple of forward work.
        min_node_s: per-node floor in seconds (launch/dispatch overhead); 0 disables it.

    Returns:
        A validated :class:`Profile` whose nodes carry ``op``, ``target``, ``module``,
        ``flops``, ``param_bytes``, ``device_mem_bytes`` (estimated from tensor sizes, see
        :mod:`lightning_split.costs.memory`) and ``shape`` as extra fields, and whose ``extra`` holds
        the batch size, both throughputs, ``estimated: True`` and the graph fingerprint.
    """
    for label, value in (("device_gflops", device_gflops), ("server_gflops", server_gflops)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{label} must be a positive finite number of GFLOP/s, got {value!r}")
    if not (backward_factor >= 0 and math.isfinite(backward_factor)):
        raise ValueError(f"backward_factor must be a finite number >= 0, got {backward_factor!r}")
    if not (min_node_s >= 0 and math.isfinite(min_node_s)):
        raise ValueError(f"min_node_s must be finite seconds >= 0, got {min_node_s!r}")

    nodes: list[NodeCost] = []
    for info in traced.nodes:
        extra: dict[str, Any] = {
            "op": info.op,
            "target": info.target,
            "module": info.module_path,
            "flops": info.flops,
            "param_bytes": info.param_bytes,
            "device_mem_bytes": estimated_footprint(info.param_bytes, info.out_bytes),
            "shape": next((list(t.shape) for t in tensors(info.out_meta)), None),
        }
        if info.op == "placeholder":
            nodes.append(NodeCost(info.name, "input", (), info.out_bytes, 0.0, 0.0, extra))
            continue
        elements = sum(t.numel for t in tensors(info.out_meta))
        work = (1.0 + backward_factor) * (info.flops if info.flops > 0 else elements)
        device_s = max(min_node_s, work / (device_gflops * 1e9))
        server_s = max(min_node_s, work / (server_gflops * 1e9))
        nodes.append(NodeCost(info.name, "op", info.inputs, info.out_bytes, device_s, server_s, extra))

    return Profile(
        nodes=nodes,
        outputs=list(traced.outputs),
        link=link,
        extra={
            "batch_size": traced.batch_size,
            "device_gflops": device_gflops,
            "server_gflops": server_gflops,
            "backward_factor": backward_factor,
            "min_node_s": min_node_s,
            "estimated": True,
            "fingerprint": traced.fingerprint(),
        },
    )


def model_from_path(spec: str) -> type:
    """Import ``"pkg.module:Class"`` (``Class`` may be dotted, ``Outer.Inner``) and return the class.

    The current directory is tried as an import root when the module is not importable
    otherwise, as ``python -m`` would, so ``--model mymodels:Net`` works from a project folder.

    Raises:
        ValueError: the spec is malformed, the module cannot be imported or lacks the attribute.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"model spec {spec!r} must look like 'package.module:ClassName'")
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} of model spec {spec!r}: {exc}") from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_") and isinstance(getattr(obj, n, None), type))
            raise ValueError(
                f"{getattr(obj, '__name__', module_name)!r} has no attribute {part!r} (model spec {spec!r}); "
                f"classes there: {', '.join(public[:12]) or 'none'}"
            )
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"model spec {spec!r} names {type(obj).__name__} {obj!r}, not a class")
    return obj


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        top = module_name.split(".")[0]
        if exc.name != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.insert(0, cwd)
        return importlib.import_module(module_name)


def example_inputs_for(
    model: torch.nn.Module | None,
    input_shape: Sequence[int] | None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[Any, ...]:
    """A seeded example batch for ``model``: ``(tensor,)`` of ``input_shape`` and ``dtype``.

    Floating dtypes get standard normal values, integer dtypes zeros and ones. A private
    generator is used, so the global RNG stream is untouched. Without ``input_shape`` the
    model's ``example_input_array`` (a LightningModule convention) is used when it has one.

    Raises:
        ValueError: no shape was given and the model has no ``example_input_array``, or the
            shape has a non-positive entry.
    """
    if input_shape is None:
        example = getattr(model, "example_input_array", None)
        if example is None:
            raise ValueError("an input shape is needed (e.g. 32,3,32,32): the model has no example_input_array")
        if isinstance(example, dict):
            raise ValueError("example_input_array is a dict of keyword inputs; pass an input shape instead")
        return example if isinstance(example, tuple) else (example,)
    shape = tuple(int(size) for size in input_shape)
    if not shape or any(size <= 0 for size in shape):
        raise ValueError(f"input shape must be positive integers, got {tuple(input_shape)}")
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=generator, dtype=dtype),)
    return (torch.randint(0, 2, shape, generator=generator, dtype=dtype),)
