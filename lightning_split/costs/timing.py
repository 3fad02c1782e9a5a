"""Node costs timed on this machine: every fx node's forward+backward, calibrated to whole passes.

:func:`time_node_costs` times the forward and backward of every cost node of a traced model
on one training batch, on this machine (the device) or, through the protocol's ``profile``
op, on the server, which times its own copy of the graph. What is run is in
:mod:`lightning_split.costs.replay`; this module clocks it and puts the figures together.

How a node is timed: the graph runs once to capture every node's inputs; then, node by node,
the node's own call runs on fresh copies of its real inputs with its backward. Forward plus
backward, ``warmup`` untimed runs, then the median of ``repeats`` timed runs. On CUDA, where
the host queues kernels ahead of the GPU, the ``repeats`` runs are queued back to back
between two device synchronisations and their mean is kept: a node then costs what the
slower of host and GPU spends on it, as in a training step. A separate ``autograd.grad`` per
node pays the autograd engine's start-up once per node where a training step pays it once
(on CUDA a hand-off to the device's autograd thread, tens of microseconds); that overhead is
calibrated on a trivial op and subtracted from every node that has a backward.
Nothing of the model changes: parameters are never stepped and ``.grad`` is never written
(``autograd.grad`` returns gradients), buffers (BatchNorm running statistics) and train/eval
flags are restored, and the random streams are forked (dropout draws leave no trace).

Two corrections make the node costs add up to a real training step (see :func:`time_node_costs`):

- *Calibration*: node-by-node timing runs warm (one node's caches, one node's allocations
  reused) and misses what a whole step pays, above all the allocator's page faults when a
  step frees and reallocates megabytes of activations (the ResNet-18 benchmark: nodes summed
  to 110.6 ms, a whole forward+backward took 140.5 ms). So whole forward+backward passes of
  the graph are timed too, and the node costs are scaled to add up to their median. The
  split between nodes stays the per-node one; only the total is the whole pass's.
- *Optimizer steps*: a step also runs the optimizer where the parameters live (14 ms of a
  148 ms ResNet-18 step for SGD with momentum), which no node's forward+backward contains.
  Given the optimizers' descriptions, one step of each is timed over copies of the parameters
  the graph uses and charged to the nodes that use them, in proportion to parameter bytes.
"""

from __future__ import annotations

import copy
import dataclasses
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from lightning_split.costs.replay import NodeStep, OptimizerStep, WholePass, captured_values, nbytes
from lightning_split.graph.batches import split_batch
from lightning_split.graph.capture import TracedModel
from lightning_split.graph.nodes import COST_OPS
from lightning_split.graph.programs import used_state
from lightning_split.graph.recording import PreservedState

__all__ = [
    "MicroBatchTiming",
    "TimedCosts",
    "fixed_part",
    "hardware_name",
    "measure_node_costs",
    "normalised_device",
    "time_node_costs",
]


@dataclass(frozen=True)
class TimedCosts:
    """Node costs of one side, and how they were put together (see :func:`time_node_costs`).

    Attributes:
        node_s: seconds per node: forward+backward (calibrated when ``whole_s`` is set) plus
            the node's share of the optimizer steps.
        raw_sum_s: the forward+backward node costs as timed one by one, summed.
        whole_s: median seconds of a whole forward+backward of the graph; ``None`` when not calibrated.
        scale: the factor applied to every node's forward+backward (``whole_s / raw_sum_s``, else 1).
        optimizer_s: seconds of one step of all the given optimizers, spread over the parameter nodes.
        optimizer_node_s: each parameter node's share of ``optimizer_s`` (included in ``node_s``).
    """

    node_s: dict[str, float]
    raw_sum_s: float
    whole_s: float | None
    scale: float
    optimizer_s: float
    optimizer_node_s: dict[str, float] = dataclasses.field(default_factory=dict)
    forward_s: dict[str, float] = dataclasses.field(default_factory=dict)
    fixed_s: dict[str, float] = dataclasses.field(default_factory=dict)
    micro_batch: MicroBatchTiming | None = None

    def details(self) -> dict[str, Any]:
        """The calibration figures as JSON values (for profile extras, cache entries and the ``profile`` reply)."""
        details: dict[str, Any] = {
            "raw_sum_s": self.raw_sum_s,
            "whole_s": self.whole_s,
            "scale": self.scale,
            "optimizer_s": self.optimizer_s,
        }
        if self.micro_batch is not None:
            details.update(self.micro_batch.details())
        return details


@dataclass(frozen=True)
class MicroBatchTiming:
    """How the nodes were timed on one micro-batch, to find what each micro-batch pays whatever its size.

    Attributes:
        micro_batches: ``M``: the nodes ran on the first of ``M`` micro-batches, cut as the runtime cuts them.
        samples, micro_samples: the batch's samples and the micro-batch's.
        raw_sum_s, whole_s: the micro-batch's nodes one by one, summed, and its whole pass (its calibration).
    """

    micro_batches: int
    samples: int
    micro_samples: int
    raw_sum_s: float
    whole_s: float | None

    def details(self) -> dict[str, Any]:
        return {
            "micro_batches": self.micro_batches,
            "micro_samples": self.micro_samples,
            "micro_raw_sum_s": self.raw_sum_s,
            "micro_whole_s": self.whole_s,
        }


def measure_node_costs(
    traced: TracedModel,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    train: bool = True,
    calibrate: bool = True,
    optimizers: Sequence[Mapping[str, Any]] = (),
) -> dict[str, float]:
    """Seconds of every cost node of ``traced`` for one training batch: :func:`time_node_costs`'s ``node_s``."""
    return time_node_costs(traced, args, kwargs, device, warmup, repeats, train, calibrate, optimizers).node_s


def time_node_costs(
    traced: TracedModel,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    train: bool = True,
    calibrate: bool = True,
    optimizers: Sequence[Mapping[str, Any]] = (),
    micro_batches: int = 1,
) -> TimedCosts:
    """Forward+backward seconds of every cost node of ``traced`` for one batch (see the module docstring).

    Args:
        traced: the traced model; its modules are used in place when they live on ``device``,
            otherwise a copy is moved there (the caller's model never moves).
        args, kwargs: one call of the original ``forward`` (the training batch).
        device: where to time (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        warmup: untimed runs of each node before timing it (allocator, caches, kernel selection).
        repeats: timed runs of each node; the median is kept.
        train: put every module in train mode while timing (as in training); flags are restored.
        calibrate: also time whole forward+backward passes of the graph (same ``warmup`` and
            ``repeats``, median) and scale the node costs to add up to it. On by default because
            node-by-node timing runs warm and sums to less than a real step (10 to 25% on CPU),
            which makes every prediction optimistic; the per-node split is kept.
        optimizers: optimizer descriptions as the ``hello`` op sends them (``class``,
            ``defaults``, ``groups`` of state keys and hyperparameters; ``torch.optim`` classes
            only). One step of each is timed over copies of the parameters the graph uses, and
            each parameter-owning node gets the share of its parameters' bytes (a parameter
            used by several nodes is shared equally between them).
        micro_batches: with ``M > 1`` (for a pipelined step), also time each node's forward
            alone (``forward_s``: its forward share of ``node_s``) and every node again on the
            first of ``M`` micro-batches (the batch's tensors cut along dimension 0 as the
            runtime cuts them), calibrated the same way. From the two sizes, a node costs
            ``fixed + per_sample * samples``; ``fixed_s`` is that fixed part, between 0 and
            the node's cost: what each micro-batch pays again (per-op overheads, on a CPU often
            a large part of a small batch's time).

    Returns:
        A :class:`TimedCosts` whose ``node_s`` holds every node of ``traced.nodes``, in graph
        order; placeholders (model inputs) cost 0.0. ``get_attr`` and ``output`` are not cost
        nodes (``docs/cost-model.md``).

    Raises:
        ValueError: ``warmup`` is negative or ``repeats`` is below 1.
        RuntimeError: a node fails when re-run on its captured inputs (the message names it).
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    device = normalised_device(torch.device(device))
    gm = traced.graph_module
    inputs = traced.graph_args(*tuple(args), **dict(kwargs or {}))
    if _module_device(gm) != device:
        gm = copy.deepcopy(gm).to(device)
    inputs = pytree.tree_map(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, inputs)
    timer = _Timer(device)
    rng_devices = [device] if device.type == "cuda" else []
    whole_s = None
    with PreservedState(gm), torch.random.fork_rng(devices=rng_devices), torch.enable_grad():
        if train:
            for module in gm.modules():
                module.training = True
        costs, whole_s = _timed_pass(gm, inputs, timer, warmup, repeats, calibrate)
        forward: dict[str, float] = {}
        small: tuple[dict[str, float], float | None, MicroBatchTiming] | None = None
        if micro_batches > 1:
            forward = _time_nodes(gm, inputs, timer, warmup, repeats, forward_only=True)
            cut = _first_micro_batch(inputs, micro_batches)
            if cut is not None:
                piece, samples, micro_samples = cut
                small_costs, small_whole = _timed_pass(gm, piece, timer, warmup, repeats, calibrate)
                timing = MicroBatchTiming(micro_batches, samples, micro_samples, sum(small_costs.values()), small_whole)
                small = (small_costs, small_whole, timing)
    raw_sum_s = sum(costs.values())
    scale = _scale(whole_s, raw_sum_s)
    optimizer_node_s = _optimizer_costs(gm, optimizers, timer, warmup, repeats) if optimizers else {}
    node_s = {name: seconds * scale + optimizer_node_s.get(name, 0.0) for name, seconds in costs.items()}
    forward_s = {name: min(1.0, forward[name] / seconds) * seconds * scale if seconds > 0 else 0.0
                 for name, seconds in costs.items() if name in forward}  # fmt: skip
    fixed_s: dict[str, float] = {}
    timing = None
    if small is not None:
        small_costs, small_whole, timing = small
        small_scale = _scale(small_whole, timing.raw_sum_s)
        for name, seconds in costs.items():
            at_micro = small_costs.get(name, 0.0) * small_scale
            fixed_s[name] = fixed_part(seconds * scale, at_micro, timing.samples, timing.micro_samples)
    return TimedCosts(
        node_s, raw_sum_s, whole_s, scale, sum(optimizer_node_s.values()), optimizer_node_s, forward_s, fixed_s, timing
    )


def fixed_part(at_batch_s: float, at_micro_s: float, samples: int, micro_samples: int) -> float:
    """What a node costs whatever its batch, from its cost on ``samples`` and on ``micro_samples`` samples.

    The line ``fixed + per_sample * n`` through both points, at ``n = 0``, kept between 0 and
    ``at_batch_s`` (timing noise can put it outside).

    Examples:
        >>> fixed_part(4.0, 1.0, 32, 8)  # a quarter of the batch costs a quarter: nothing fixed
        0.0
        >>> fixed_part(4.0, 2.5, 32, 8)  # 2 + n/16
        2.0
    """
    if micro_samples >= samples:
        raise ValueError(f"need fewer micro-batch samples than batch samples, got {micro_samples} of {samples}")
    fixed = (at_micro_s * samples - at_batch_s * micro_samples) / (samples - micro_samples)
    return min(max(fixed, 0.0), at_batch_s)


def _scale(whole_s: float | None, raw_sum_s: float) -> float:
    return whole_s / raw_sum_s if whole_s is not None and raw_sum_s > 0 else 1.0


def _timed_pass(
    gm: fx.GraphModule, inputs: Sequence[Any], timer: _Timer, warmup: int, repeats: int, calibrate: bool
) -> tuple[dict[str, float], float | None]:
    """Every node's forward+backward seconds on ``inputs`` and, with ``calibrate``, a whole pass's."""
    costs = _time_nodes(gm, inputs, timer, warmup, repeats)  # its captured activations are freed on return
    if not calibrate:
        return costs, None
    whole = WholePass(gm, inputs)
    return costs, _seconds(timer, whole.prepare, whole.run, warmup, repeats)


def _first_micro_batch(inputs: Sequence[Any], micro_batches: int) -> tuple[list[Any], int, int] | None:
    """The first of ``micro_batches`` micro-batches of the graph's inputs, the batch's samples and the piece's.

    Cut by :func:`~lightning_split.graph.batches.split_batch`, as the runtime cuts them; ``None``
    when there is nothing to cut (no batch of two or more samples).
    """
    pieces = split_batch(inputs, micro_batches)
    if len(pieces) < 2:
        return None
    index = next(i for i, v in enumerate(inputs) if isinstance(v, torch.Tensor) and v.dim() > 0)
    return list(pieces[0]), int(inputs[index].shape[0]), int(pieces[0][index].shape[0])


def _time_nodes(
    gm: fx.GraphModule, inputs: Sequence[Any], timer: _Timer, warmup: int, repeats: int, forward_only: bool = False
) -> dict[str, float]:
    """Forward+backward seconds of each node on its captured inputs; the per-``autograd.grad`` overhead removed.

    ``forward_only``: the forward alone (with autograd recording, as in training).
    """
    values = captured_values(gm, inputs)
    overhead_s, floor_s = (0.0, 0.0) if forward_only else _backward_call_overhead(timer)
    costs: dict[str, float] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            costs[node.name] = 0.0
        elif node.op in COST_OPS:
            step = NodeStep(gm, node, values)
            try:
                seconds = _seconds(timer, step.prepare, step.run_forward if forward_only else step.run, warmup, repeats)
            except Exception as exc:
                raise RuntimeError(
                    f"timing node {node.name!r} ({node.op} {node.target}) failed: {type(exc).__name__}: {exc}"
                ) from exc
            if step.differentiates and not forward_only:
                seconds = max(seconds - overhead_s, min(seconds, floor_s))
            costs[node.name] = seconds
    return costs


def _optimizer_costs(
    gm: fx.GraphModule, optimizers: Sequence[Mapping[str, Any]], timer: _Timer, warmup: int, repeats: int
) -> dict[str, float]:
    """Each parameter node's share of one step of every optimizer, split by parameter bytes.

    A step is timed after at least one untimed step (the first one creates the optimizer's
    state, e.g. momentum buffers, which training pays once, not per step).
    """
    by_key: dict[str, torch.Tensor] = {}
    users: dict[int, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op not in COST_OPS:
            continue
        seen: set[int] = set()
        for key, tensor in used_state(gm, [node.name]).items():
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                by_key.setdefault(key, tensor)
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    users.setdefault(id(tensor), []).append(node.name)
    shares: dict[str, float] = {}
    for description in optimizers:
        step = OptimizerStep(description, by_key)
        if not step.originals:
            continue
        seconds = _seconds(timer, lambda: None, step.run, max(warmup, 1), repeats)
        total_bytes = sum(nbytes(p) for p in step.originals)
        for param in step.originals:
            owners = users[id(param)]
            for name in owners:
                shares[name] = shares.get(name, 0.0) + seconds * nbytes(param) / total_bytes / len(owners)
    return shares


def hardware_name(device: torch.device) -> str:
    """A short name of the hardware behind ``device`` (GPU model, or the CPU and its thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def normalised_device(device: torch.device) -> torch.device:
    """``device`` with its index: a bare ``cuda`` is the current CUDA device (cache keys, hardware names)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _module_device(gm: torch.nn.Module) -> torch.device:
    for tensor in (*gm.parameters(), *gm.buffers()):
        return tensor.device
    return torch.device("cpu")


class _Timer:
    """Wall seconds of a piece of work on one device; synchronises CUDA before each clock read."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _seconds(timer: _Timer, prepare: Callable[[], Any], run: Callable[[Any], None], warmup: int, repeats: int) -> float:
    """Seconds of ``run(prepare())``, ``prepare`` untimed: the median of single runs on CPU, pipelined on CUDA.

    On CUDA the host queues kernels while earlier ones run, so work costs what the slower of
    host and GPU spends on it. Synchronising around each run would add the idle gaps of both,
    so the ``repeats`` runs are queued back to back between two synchronisations and their
    mean is kept.
    """
    for _ in range(warmup):
        run(prepare())
    if timer.cuda:
        calls = [prepare() for _ in range(repeats)]
        started = timer.now()
        for call in calls:
            run(call)
        return (timer.now() - started) / repeats
    samples = []
    for _ in range(repeats):
        call = prepare()
        started = timer.now()
        run(call)
        samples.append(timer.now() - started)
    return statistics.median(samples)


_CHAIN = 64


def _backward_call_overhead(timer: _Timer) -> tuple[float, float]:
    """What a separate ``autograd.grad`` call per node adds, and the cost of a trivial op inside one backward.

    A training step runs one backward over the whole graph; timing nodes one by one runs one
    per node, and each pays the engine's start-up (on CUDA a hand-off to the device's autograd
    thread, tens of microseconds). Calibrated here as the time of a one-element multiply with
    its own ``autograd.grad`` minus the time per multiply in a chain of them under a single one.
    """
    leaf = torch.ones(1, device=timer.device, requires_grad=True)
    grad = torch.ones(1, device=timer.device)

    def isolated(_: None) -> None:
        torch.autograd.grad(leaf * 1.5, leaf, grad)

    def chained(_: None) -> None:
        out = leaf
        for _ in range(_CHAIN):
            out = out * 1.5
        torch.autograd.grad(out, leaf, grad)

    alone = _seconds(timer, lambda: None, isolated, 10, 50)
    per_op = _seconds(timer, lambda: None, chained, 2, 10) / _CHAIN
    return max(0.0, alone - per_op), per_op
