"""Estimated profiles: node costs from FLOPs or a hardware preset's roofline, with no hardware at hand.

:func:`estimate_profile` turns a :class:`~lightning_split.graph.capture.TracedModel` into a
:class:`~lightning_split.planning.profile.Profile`. It is what ``lightning-split plan --model``
and ``SplitStrategy(costs="estimate")`` use when nothing has been measured; a measured profile
(``lightning-split profile``) replaces it when accuracy matters. Each side is costed one of two
ways:

*FLOPs over a throughput* (``device_gflops`` / ``server_gflops``, the default)::

    work   = FLOPs counted by FlopCounterMode, or one FLOP per output element when none
             were counted (elementwise ops, normalisations, pooling, views) so nothing is free
    time   = max(min_node_s, (1 + backward_factor) * work / throughput)

``backward_factor = 2`` is the usual rule of thumb: the backward pass of a matmul or a
convolution computes two products of the forward's size (gradients of input and of weight).
``min_node_s`` is a floor per node standing for launch/dispatch overhead, which dominates tiny
ops on real hardware.

*The roofline of a hardware preset* (``device="jetson-nano"`` / ``server="t4"``, see
:mod:`lightning_split.planning.hardware`): ``max(3 x work / sustained FLOP/s, 3 x bytes /
sustained bandwidth) + kernels x launch`` (:func:`lightning_split.planning.roofline.node_seconds`),
where ``bytes`` are the node's inputs, output and parameters; views cost nothing. It charges
memory-bound nodes (normalisation, activations, pooling) their traffic, which the FLOP count
misses. ``backward_factor`` and ``min_node_s`` apply to the FLOP estimate only.

Placeholders (model inputs) cost nothing on either side. Every node also gets the training
footprint it would have on the device, ``device_mem_bytes`` (parameters, gradients,
``optimizer_slots`` copies of optimizer state, saved activations:
:func:`lightning_split.planning.memory.node_training_bytes`).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_split.graph.capture import TracedModel
from lightning_split.graph.metadata import tensors
from lightning_split.graph.nodes import NodeInfo
from lightning_split.planning.hardware import Hardware, preset
from lightning_split.planning.memory import DEFAULT_OPTIMIZER_SLOTS, node_training_bytes, saved_bytes
from lightning_split.planning.profile import Link, NodeCost, Profile
from lightning_split.planning.roofline import is_view, node_seconds

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


@dataclass(frozen=True)
class _NodeWork:
    """What both cost rules read of one node: its forward work, traffic, parameters and whether it is a view."""

    work_flops: float
    bytes_moved: int
    has_parameters: bool
    view: bool


class _FlopRate:
    """``max(min_node_s, (1 + backward_factor) x work / rate)``."""

    def __init__(self, gflops: float, backward_factor: float, min_node_s: float) -> None:
        self.gflops, self.backward_factor, self.min_node_s = gflops, backward_factor, min_node_s

    def seconds(self, node: _NodeWork) -> float:
        return max(self.min_node_s, (1.0 + self.backward_factor) * node.work_flops / (self.gflops * 1e9))

    def describe(self) -> str:
        return f"FLOPs at {self.gflops:g} GFLOP/s"


class _Roofline:
    """The roofline of a hardware preset (:func:`lightning_split.planning.roofline.node_seconds`)."""

    def __init__(self, hardware: Hardware) -> None:
        self.hardware = hardware

    def seconds(self, node: _NodeWork) -> float:
        return node_seconds(node.work_flops, node.bytes_moved, node.has_parameters, self.hardware, view=node.view)

    def describe(self) -> str:
        return f"roofline of {self.hardware.key}"


def _side(label: str, role: str, hardware: str | Hardware | None, gflops: float | None, default: float,
          backward_factor: float, min_node_s: float) -> _FlopRate | _Roofline:  # fmt: skip
    """How one side is costed: a preset's roofline, or FLOPs over ``gflops`` (default ``default``)."""
    if hardware is not None:
        if gflops is not None:
            raise ValueError(f"give {label}_gflops or a {label} preset, not both ({label}={hardware!r})")
        return _Roofline(preset(hardware, role=role))
    rate = default if gflops is None else gflops
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"{label}_gflops must be a positive finite number of GFLOP/s, got {rate!r}")
    return _FlopRate(rate, backward_factor, min_node_s)


def estimate_profile(
    traced: TracedModel,
    link: Link,
    device_gflops: float | None = None,
    server_gflops: float | None = None,
    backward_factor: float = 2.0,
    min_node_s: float = DEFAULT_MIN_NODE_S,
    *,
    device: str | Hardware | None = None,
    server: str | Hardware | None = None,
    optimizer_slots: int = DEFAULT_OPTIMIZER_SLOTS,
) -> Profile:
    """Estimate forward+backward seconds per node from FLOPs or from hardware presets.

    Args:
        traced: the traced model (its recording run gives FLOPs and output sizes).
        link: the network to put in the profile.
        device_gflops: effective GFLOP/s of the device (default :data:`DEFAULT_DEVICE_GFLOPS`).
        server_gflops: effective GFLOP/s of the server (default :data:`DEFAULT_SERVER_GFLOPS`).
        backward_factor: backward work as a multiple of forward work (FLOP estimate).
        min_node_s: per-node floor in seconds (launch/dispatch overhead; FLOP estimate); 0 disables it.
        device: a device preset (``"jetson-nano"``) costed by its roofline, instead of ``device_gflops``.
        server: a server preset (``"t4"``) costed by its roofline, instead of ``server_gflops``.
        optimizer_slots: optimizer state per parameter for ``device_mem_bytes`` (2: Adam).

    Returns:
        A validated :class:`Profile` whose nodes carry ``op``, ``target``, ``module``,
        ``module_class`` (module calls), ``flops``, ``param_bytes``, ``device_mem_bytes`` and
        ``shape``, and whose ``extra`` holds the batch size, how each side was costed
        (``device_costs``, ``server_costs``; ``device`` and ``server`` name the presets and
        ``device_gflops``/``server_gflops`` the sustained rates), ``estimated: True`` and the
        graph fingerprint.

    Raises:
        ValueError: a rate or factor out of range, a side given both ways, or an unknown preset
            (:class:`~lightning_split.planning.hardware.UnknownHardwareError`, naming the known ones).
    """
    if not (backward_factor >= 0 and math.isfinite(backward_factor)):
        raise ValueError(f"backward_factor must be a finite number >= 0, got {backward_factor!r}")
    if not (min_node_s >= 0 and math.isfinite(min_node_s)):
        raise ValueError(f"min_node_s must be finite seconds >= 0, got {min_node_s!r}")
    sides = (
        _side("device", "device", device, device_gflops, DEFAULT_DEVICE_GFLOPS, backward_factor, min_node_s),
        _side("server", "server", server, server_gflops, DEFAULT_SERVER_GFLOPS, backward_factor, min_node_s),
    )
    sizes = {info.name: info.out_bytes for info in traced.nodes}
    nodes = [_node(traced, info, sizes, sides, optimizer_slots) for info in traced.nodes]
    extra: dict[str, Any] = {"batch_size": traced.batch_size}
    for label, side in zip(("device", "server"), sides):
        if isinstance(side, _Roofline):
            extra[label] = side.hardware.key
        extra[f"{label}_gflops"] = side.hardware.sustained_gflops if isinstance(side, _Roofline) else side.gflops
        extra[f"{label}_costs"] = side.describe()
    extra.update(backward_factor=backward_factor, min_node_s=min_node_s, optimizer_slots=optimizer_slots)
    extra.update(estimated=True, fingerprint=traced.fingerprint())
    return Profile(nodes=nodes, outputs=list(traced.outputs), link=link, extra=extra)


def _node(
    traced: TracedModel,
    info: NodeInfo,
    sizes: dict[str, int],
    sides: tuple[_FlopRate | _Roofline, _FlopRate | _Roofline],
    optimizer_slots: int,
) -> NodeCost:
    """One estimated profile node: its fields, its footprint and each side's seconds."""
    extra: dict[str, Any] = {
        "op": info.op,
        "target": info.target,
        "module": info.module_path,
        "flops": info.flops,
        "param_bytes": info.param_bytes,
        "shape": next((list(t.shape) for t in tensors(info.out_meta)), None),
    }
    if info.op == "call_module":
        extra["module_class"] = type(traced.graph_module.get_submodule(info.target)).__name__
    kind = "input" if info.op == "placeholder" else "op"
    inputs = () if kind == "input" else info.inputs
    node = NodeCost(info.name, kind, inputs, info.out_bytes, 0.0, 0.0, extra)
    memory = node_training_bytes(info.param_bytes, saved_bytes(node), optimizer_slots)
    if kind == "input":
        return NodeCost(info.name, kind, (), info.out_bytes, 0.0, 0.0, extra, device_mem_bytes=memory)
    elements = sum(t.numel for t in tensors(info.out_meta))
    work = _NodeWork(
        work_flops=float(info.flops if info.flops > 0 else elements),
        bytes_moved=sum(sizes[name] for name in dict.fromkeys(info.inputs)) + info.out_bytes + info.param_bytes,
        has_parameters=info.param_bytes > 0,
        view=is_view(extra),
    )
    device_s, server_s = (side.seconds(work) for side in sides)
    return NodeCost(info.name, kind, inputs, info.out_bytes, device_s, server_s, extra, device_mem_bytes=memory)


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
