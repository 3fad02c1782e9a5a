"""Measured profiles: node costs timed on real hardware, the link timed on the real connection.

The optimal cut is only as good as the costs it is computed from. This module measures them:

- :func:`measure_node_costs` times the forward and backward of every fx node of a traced model
  on one training batch, on this machine (the device) or, through the protocol's ``profile``
  op, on the server, which times its own copy of the graph.
- :func:`measure_link` times round trips, uploads and downloads over the very websocket
  connection that training uses.
- :class:`ProfileCache` keeps node costs on disk, keyed by graph fingerprint, batch shapes,
  side, hardware and torch version, so the second start of the same model skips measuring.
- :class:`Profiler` gets node costs for both sides, from the cache or by measuring, and says
  how long it took; :func:`measured_profile` assembles a ``Profile`` from them.

How a node is timed: the graph runs once under an ``fx.Interpreter`` to capture every node's
inputs. Then, node by node, the node's own call (module, function or method) runs on fresh
copies of its real inputs, and ``torch.autograd.grad`` takes its backward with respect to the
inputs that need gradients in training and the parameters it uses. Forward plus backward,
``warmup`` untimed runs, then the median of ``repeats`` timed runs. On CUDA, where the host
queues kernels ahead of the GPU, the ``repeats`` runs are queued back to back between two
device synchronisations and their mean is kept: a node then costs what the slower of host
and GPU spends on it, as in a training step. A separate ``autograd.grad`` per node pays the autograd engine's
start-up once per node where a training step pays it once (on CUDA a hand-off to the device's
autograd thread, tens of microseconds); that overhead is calibrated on a trivial op and
subtracted from every node that has a backward.
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
import hashlib
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from lightning_split.costs.estimate import estimate_profile
from lightning_split.graph.capture import COST_OPS, TracedModel, _PreservedState
from lightning_split.graph.programs import example_skeleton, graph_summary, used_state
from lightning_split.planning.profile import Link, Profile
from lightning_split.transport import messages
from lightning_split.transport.optimizers import OptimizerSpec, resolve_optimizer

if TYPE_CHECKING:
    from lightning_split.transport.client import RemoteServer

__all__ = [
    "CACHE_ENV",
    "MAX_PROBE_BYTES",
    "MIN_PROBE_BYTES",
    "NodeCosts",
    "ProfileCache",
    "Profiler",
    "TimedCosts",
    "default_cache_dir",
    "measure_link",
    "measure_node_costs",
    "measured_profile",
    "model_fields",
    "profile_builder",
    "time_node_costs",
    "typical_payload_bytes",
]

CACHE_ENV = "LIGHTNING_SPLIT_CACHE"
CACHE_FORMAT = "lightning-split-node-costs/2"

#: Link probes smaller than this are padded: below it the transfer hides in the round-trip noise.
MIN_PROBE_BYTES = 256 * 1024
#: Link probes larger than this are capped, so measuring a slow link stays quick.
MAX_PROBE_BYTES = 16 * 2**20
#: The smallest transfer time told apart from zero, whatever the spread of the round trips.
NOISE_FLOOR_S = 50e-6


# ---------------------------------------------------------------------------------------------
# Node costs


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

    def details(self) -> dict[str, Any]:
        """The calibration figures as JSON values (for profile extras, cache entries and the ``profile`` reply)."""
        return {
            "raw_sum_s": self.raw_sum_s,
            "whole_s": self.whole_s,
            "scale": self.scale,
            "optimizer_s": self.optimizer_s,
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
    device = _normalised(torch.device(device))
    gm = traced.graph_module
    inputs = traced.graph_args(*tuple(args), **dict(kwargs or {}))
    if _module_device(gm) != device:
        gm = copy.deepcopy(gm).to(device)
    inputs = pytree.tree_map(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, inputs)
    timer = _Timer(device)
    rng_devices = [device] if device.type == "cuda" else []
    whole_s = None
    with _PreservedState(gm), torch.random.fork_rng(devices=rng_devices), torch.enable_grad():
        if train:
            for module in gm.modules():
                module.training = True
        costs = _time_nodes(gm, inputs, timer, warmup, repeats)  # its captured activations are freed on return
        if calibrate:
            whole = _WholePass(gm, inputs)
            whole_s = _seconds(timer, whole.prepare, whole.run, warmup, repeats)
    raw_sum_s = sum(costs.values())
    scale = whole_s / raw_sum_s if whole_s is not None and raw_sum_s > 0 else 1.0
    optimizer_node_s = _optimizer_costs(gm, optimizers, timer, warmup, repeats) if optimizers else {}
    node_s = {name: seconds * scale + optimizer_node_s.get(name, 0.0) for name, seconds in costs.items()}
    return TimedCosts(node_s, raw_sum_s, whole_s, scale, sum(optimizer_node_s.values()), optimizer_node_s)


def _time_nodes(
    gm: fx.GraphModule, inputs: Sequence[Any], timer: _Timer, warmup: int, repeats: int
) -> dict[str, float]:
    """Forward+backward seconds of each node on its captured inputs; the per-``autograd.grad`` overhead removed."""
    values = _Capture(gm).values(inputs)
    overhead_s, floor_s = _backward_call_overhead(timer)
    costs: dict[str, float] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            costs[node.name] = 0.0
        elif node.op in COST_OPS:
            step = _NodeStep(gm, node, values)
            try:
                seconds = _seconds(timer, step.prepare, step.run, warmup, repeats)
            except Exception as exc:
                raise RuntimeError(
                    f"timing node {node.name!r} ({node.op} {node.target}) failed: {type(exc).__name__}: {exc}"
                ) from exc
            costs[node.name] = max(seconds - overhead_s, min(seconds, floor_s)) if step.differentiates else seconds
    return costs


def _normalised(device: torch.device) -> torch.device:
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


class _Capture(fx.Interpreter):
    """Runs the graph once and keeps every node's output (detached; parameters as they are)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.kept: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.op == "get_attr":
            self.kept[n] = result
        else:
            # requires_grad survives the detach as a flag: whether training would differentiate it
            self.kept[n] = pytree.tree_map(_detach_keeping_flag, result)
        return result

    def values(self, inputs: Sequence[Any]) -> dict[fx.Node, Any]:
        self.run(*inputs)
        return self.kept


@dataclass(frozen=True)
class _Detached:
    """A captured tensor and whether it required grad when the graph ran."""

    tensor: torch.Tensor
    requires_grad: bool


def _detach_keeping_flag(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _Detached(value.detach(), value.requires_grad)
    return value


@dataclass
class _Call:
    """Fresh inputs for one run of a node, and the leaves its backward differentiates."""

    args: Any
    kwargs: Any
    leaves: list[torch.Tensor]


class _NodeStep:
    """One node's call plus its backward, re-run on fresh copies of the captured inputs."""

    def __init__(self, gm: fx.GraphModule, node: fx.Node, values: Mapping[fx.Node, Any]) -> None:
        self.node = node
        self.values = values
        self.call = _node_callable(gm, node)
        self.params: list[torch.Tensor] = []
        if node.op == "call_module":
            self.params = [p for p in gm.get_submodule(str(node.target)).parameters() if p.requires_grad]
        self.grads: list[torch.Tensor] | None = None
        self.differentiates = False

    def prepare(self) -> _Call:
        """Copies of the inputs (so in-place ops never touch the captured values), made before timing."""
        leaves: list[torch.Tensor] = list(self.params)
        fresh: dict[fx.Node, Any] = {}

        def value_of(source: fx.Node) -> Any:
            if source not in fresh:
                if source.op == "get_attr":
                    value = self.values[source]
                    if isinstance(value, torch.Tensor) and value.requires_grad:
                        leaves.append(value)
                    fresh[source] = value
                else:
                    fresh[source] = pytree.tree_map(lambda v: _fresh_input(v, leaves), self.values[source])
            return fresh[source]

        args = fx.node.map_arg(self.node.args, value_of)
        kwargs = fx.node.map_arg(self.node.kwargs, value_of)
        return _Call(args, kwargs, leaves)

    def run(self, call: _Call) -> None:
        """One forward and, if anything of it is differentiable, one backward with all-ones output gradients."""
        result = self.call(*call.args, **call.kwargs)
        outputs = [t for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not outputs or not call.leaves:
            return
        if self.grads is None:  # same shapes on every run: made once, not timed again
            self.grads = [torch.ones_like(t) for t in outputs]
        self.differentiates = True
        torch.autograd.grad(outputs, call.leaves, self.grads, allow_unused=True)


class _WholePass:
    """The whole graph's forward and one backward over it, as a training step runs them (``.grad`` untouched)."""

    def __init__(self, gm: fx.GraphModule, inputs: Sequence[Any]) -> None:
        self.gm = gm
        self.inputs = list(inputs)
        self.params = [p for p in gm.parameters() if p.requires_grad]
        self.grads: list[torch.Tensor] | None = None

    def prepare(self) -> _Call:
        leaves: list[torch.Tensor] = list(self.params)
        args = [pytree.tree_map(lambda v: _fresh_input(_detach_keeping_flag(v), leaves), v) for v in self.inputs]
        return _Call(args, {}, leaves)

    def run(self, call: _Call) -> None:
        result = self.gm(*call.args)
        outputs = [t for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not outputs or not call.leaves:
            return
        if self.grads is None:
            self.grads = [torch.ones_like(t) for t in outputs]
        torch.autograd.grad(outputs, call.leaves, self.grads, allow_unused=True)


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
        step = _OptimizerStep(description, by_key)
        if not step.originals:
            continue
        seconds = _seconds(timer, lambda: None, step.run, max(warmup, 1), repeats)
        total_bytes = sum(_nbytes(p) for p in step.originals)
        for param in step.originals:
            owners = users[id(param)]
            for name in owners:
                shares[name] = shares.get(name, 0.0) + seconds * _nbytes(param) / total_bytes / len(owners)
    return shares


class _OptimizerStep:
    """One optimizer, rebuilt from its description over copies of the graph's parameters, with set gradients.

    The copies have all-ones gradients; what a step costs depends on the tensors' sizes, not values.
    """

    def __init__(self, description: Mapping[str, Any], by_key: Mapping[str, torch.Tensor]) -> None:
        spec = OptimizerSpec.from_json(description)
        resolve_optimizer(spec.class_name)  # refuse a class that is not torch.optim before anything is copied
        self.originals: list[torch.Tensor] = []
        params_per_group: list[list[torch.Tensor]] = []
        taken: set[int] = set()
        for group in spec.groups:
            params = []
            for key in group["params"]:
                original = by_key.get(key)
                if original is None or id(original) in taken:
                    continue
                taken.add(id(original))
                self.originals.append(original)
                duplicate = original.detach().clone().requires_grad_(True)
                duplicate.grad = torch.ones_like(duplicate)
                params.append(duplicate)
            params_per_group.append(params)
        self.optimizer: torch.optim.Optimizer | None = None
        if self.originals:
            self.optimizer = spec.build(params_per_group, "to time its step")

    def run(self, _: None) -> None:
        assert self.optimizer is not None
        self.optimizer.step()


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


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


def _node_callable(gm: fx.GraphModule, node: fx.Node) -> Callable[..., Any]:
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))
    if node.op == "call_function":
        return node.target  # type: ignore[return-value]
    name = str(node.target)
    return lambda obj, *args, **kwargs: getattr(obj, name)(*args, **kwargs)


def _fresh_input(value: Any, leaves: list[torch.Tensor]) -> Any:
    """A copy of a captured tensor with its strides (layout sets kernel speed), safe to modify in place.

    When training would differentiate it, the copy hangs off a new leaf that is added to
    ``leaves``: the backward then computes this input's gradient, as in training.
    """
    if not isinstance(value, _Detached):
        return value
    source = value.tensor
    if value.requires_grad:
        source = source.detach().requires_grad_(True)
        leaves.append(source)
    try:
        out = torch.empty_strided(source.size(), source.stride(), dtype=source.dtype, device=source.device)
        return out.copy_(source)
    except RuntimeError:  # overlapping strides (an expanded tensor) cannot be written to
        return source.clone()


# ---------------------------------------------------------------------------------------------
# The link


def measure_link(
    remote: RemoteServer,
    up_bytes: int,
    down_bytes: int,
    repeats: int = 5,
    min_bytes: int = MIN_PROBE_BYTES,
    max_bytes: int = MAX_PROBE_BYTES,
) -> Link:
    """Measure round-trip time and both throughputs over ``remote``'s connection with ``ping`` ops.

    Per repeat (after one untimed round): an empty ping (the round trip), a ping carrying
    ``up_bytes`` (uplink) and a ping whose reply carries ``down_bytes`` (downlink), interleaved
    so drifts hit all three alike. ``rtt_s`` is the median empty round trip; a rate is the extra
    message bytes divided by the median extra time over that round trip. Sizes are clamped to
    ``[min_bytes, max_bytes]`` (a tiny probe's transfer hides in the noise; a huge one is slow).

    When a transfer takes less than the noise (``NOISE_FLOOR_S`` or twice the median absolute
    deviation of the round trips, whichever is larger), the link is faster than this probe can
    tell: the transfer time is then taken as that noise, which gives a finite lower bound of the
    rate, whose predicted cost for a payload of the probe's size is at most the noise.

    Through a :class:`~lightning_split.transport.client.RemoteServer` with ``link_limit`` the result is
    the emulated link (plus the real one underneath).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not 0 < min_bytes <= max_bytes:
        raise ValueError(f"need 0 < min_bytes <= max_bytes, got {min_bytes} and {max_bytes}")
    up = int(min(max(up_bytes, min_bytes), max_bytes))
    down = int(min(max(down_bytes, min_bytes), max_bytes))
    payload = torch.zeros(up, dtype=torch.uint8)
    probes = {
        "rtt": messages.Ping(payload=None, reply_bytes=0),
        "up": messages.Ping(payload=payload, reply_bytes=0),
        "down": messages.Ping(payload=None, reply_bytes=down),
    }
    samples: dict[str, list[tuple[float, int, int]]] = {kind: [] for kind in probes}
    for round_index in range(repeats + 1):
        for kind, op in probes.items():
            sample = _timed_call(remote, op)
            if round_index:
                samples[kind].append(sample)
    rtts = [s for s, _, _ in samples["rtt"]]
    rtt = statistics.median(rtts)
    noise = max(NOISE_FLOOR_S, 2 * statistics.median(abs(r - rtt) for r in rtts))
    base_up = statistics.median(u for _, u, _ in samples["rtt"])
    base_down = statistics.median(d for _, _, d in samples["rtt"])

    def rate(kind: str, which: int, base: float) -> float:
        extra_s = statistics.median(s[0] for s in samples[kind]) - rtt
        extra_bytes = statistics.median(s[which] for s in samples[kind]) - base
        return max(extra_bytes, 1) / max(extra_s, noise)

    return Link(rate("up", 1, base_up), rate("down", 2, base_down), rtt)


def _timed_call(remote: RemoteServer, op: messages.Ping) -> tuple[float, int, int]:
    """Seconds of one request/reply, and its message bytes up and down."""
    before = remote.traffic.snapshot()
    started = time.perf_counter()
    remote.call([op])
    elapsed = time.perf_counter() - started
    spent = remote.traffic.since(before)
    return elapsed, spent.bytes_up, spent.bytes_down


def typical_payload_bytes(traced: TracedModel) -> int:
    """A probe size for :func:`measure_link` before the cut is known: the median output of the op nodes.

    Once a cut is planned, measuring again with the cut's bytes (and re-planning if the
    link differs much) sizes the probe exactly.
    """
    sizes = sorted(info.out_bytes for info in traced.nodes if info.op != "placeholder")
    return sizes[len(sizes) // 2] if sizes else MIN_PROBE_BYTES


# ---------------------------------------------------------------------------------------------
# The cache


def default_cache_dir() -> Path:
    """``$LIGHTNING_SPLIT_CACHE``, else ``$XDG_CACHE_HOME/lightning-split``, else ``~/.cache/lightning-split``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "lightning-split"


@dataclass(frozen=True)
class CachedCosts:
    """Node costs read back from the cache, with how long measuring them took then."""

    node_s: dict[str, float]
    measure_s: float
    hardware: str
    path: Path
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class ProfileCache:
    """Node costs on disk, one JSON file per key, so a second start of the same setup measures nothing.

    A key (see :meth:`key`) names everything the costs depend on: the graph fingerprint,
    the shapes and dtypes of the batch, the side, the hardware, the torch version, the
    warm-up/repeat counts, whether the costs are calibrated and the optimizers whose steps
    they include. Files are written to a temporary name and renamed into place, so a reader
    never sees half an entry; an unreadable or inconsistent entry is ignored with a warning
    (and overwritten by the next measurement).

    Args:
        directory: where entries live (default: :func:`default_cache_dir`).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()

    @staticmethod
    def key(
        fingerprint: str,
        example: Any,
        side: str,
        hardware: str,
        warmup: int,
        repeats: int,
        torch_version: str | None = None,
        model: str | None = None,
        calibrate: bool = True,
        optimizers: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """The fields an entry is keyed by (``example`` may hold tensors or their skeleton)."""
        return {
            "format": CACHE_FORMAT,
            "fingerprint": fingerprint,
            "example": json.loads(json.dumps(example_skeleton(example), default=str)),
            "side": side,
            "hardware": hardware,
            "torch": torch_version or torch.__version__,
            "warmup": int(warmup),
            "repeats": int(repeats),
            "model": model,
            "calibrate": bool(calibrate),
            "optimizers": _jsonable(list(optimizers)),
        }

    def path(self, key: Mapping[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.directory / f"{key['side']}-{digest}.json"

    def get(self, key: Mapping[str, Any]) -> CachedCosts | None:
        """The entry for ``key``, or ``None`` when there is none or it is unusable (then with a warning)."""
        path = self.path(key)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            warnings.warn(f"lightning_split: cannot read the profile cache entry {path}: {exc}", stacklevel=2)
            return None
        try:
            data = json.loads(text)
            if data["key"] != json.loads(json.dumps(dict(key))):
                raise ValueError("its key differs from the one asked for")
            node_s = {str(name): float(value) for name, value in data["node_s"].items()}
            if not all(math.isfinite(value) and value >= 0 for value in node_s.values()):
                raise ValueError("a node cost is not finite seconds >= 0")
            hardware = str(data.get("hardware", key["hardware"]))
            return CachedCosts(node_s, float(data["measure_s"]), hardware, path, dict(data.get("details", {})))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            warnings.warn(
                f"lightning_split: ignoring the corrupted profile cache entry {path} "
                f"({type(exc).__name__}: {exc}); it will be measured again",
                stacklevel=2,
            )
            return None

    def put(
        self,
        key: Mapping[str, Any],
        node_s: Mapping[str, float],
        measure_s: float,
        hardware: str,
        details: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Store an entry atomically; returns its path, or ``None`` (with a warning) if it cannot be written.

        ``details`` (e.g. :meth:`TimedCosts.details`) is kept alongside and read back as it was.
        """
        path = self.path(key)
        entry = {
            "key": dict(key),
            "node_s": dict(node_s),
            "measure_s": measure_s,
            "hardware": hardware,
            "details": dict(details or {}),
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.directory, suffix=".tmp", delete=False) as handle:
                json.dump(entry, handle)
            os.replace(handle.name, path)
        except OSError as exc:
            warnings.warn(f"lightning_split: cannot write the profile cache entry {path}: {exc}", stacklevel=2)
            return None
        return path


# ---------------------------------------------------------------------------------------------
# Both sides together


@dataclass(frozen=True)
class NodeCosts:
    """Node costs of one side and where they came from.

    Attributes:
        node_s: forward+backward seconds per node.
        side: ``"device"`` or ``"server"``.
        hardware: what they were measured on.
        wall_s: seconds this call took (measuring, or reading the cache).
        measure_s: seconds measuring took when they were measured.
        cached: whether they came from the cache.
        details: how the costs were calibrated (:meth:`TimedCosts.details`; empty if unknown).
    """

    node_s: dict[str, float]
    side: str
    hardware: str
    wall_s: float
    measure_s: float
    cached: bool
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def extras(self) -> dict[str, Any]:
        """Profile extras for this side: ``device_scale``, ``device_raw_sum_s``, ``device_whole_s``, ... ."""
        return {f"{self.side}_{name}": value for name, value in self.details.items()}

    def describe(self) -> str:
        """One line for logs: how many nodes, on what, how long, cached or not."""
        how = f"from the cache in {self.wall_s:.3f} s (measuring took {self.measure_s:.2f} s)"
        if not self.cached:
            how = f"measured in {self.wall_s:.2f} s"
        total = sum(self.node_s.values())
        text = f"{self.side} costs of {len(self.node_s)} nodes on {self.hardware}: {total * 1e3:.1f} ms/step, {how}"
        if self.details.get("whole_s") is not None:
            text += (
                f"; calibrated x{self.details['scale']:.3f} (nodes one by one {self.details['raw_sum_s'] * 1e3:.1f} ms,"
                f" whole pass {self.details['whole_s'] * 1e3:.1f} ms)"
            )
        if self.details.get("optimizer_s"):
            text += f"; optimizer steps {self.details['optimizer_s'] * 1e3:.1f} ms"
        return text


def hardware_name(device: torch.device) -> str:
    """A short name of the hardware behind ``device`` (GPU model, or the CPU and its thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


class Profiler:
    """Produces node costs for the device and the server, from the cache when it has them.

    Args:
        cache: where costs are kept (``None``: always measure, store nothing).
        warmup, repeats: per node, untimed and timed runs (see :func:`measure_node_costs`).
        device: this side's torch device.
        calibrate: scale node costs to whole forward+backward passes, on both sides (see
            :func:`time_node_costs`; on by default).
    """

    def __init__(
        self,
        cache: ProfileCache | None = None,
        warmup: int = 2,
        repeats: int = 5,
        device: str | torch.device = "cpu",
        calibrate: bool = True,
    ) -> None:
        self.cache = cache
        self.warmup = warmup
        self.repeats = repeats
        self.device = torch.device(device)
        self.calibrate = calibrate

    def device_costs(
        self,
        traced: TracedModel,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None = None,
        optimizers: Sequence[Mapping[str, Any]] = (),
    ) -> NodeCosts:
        """This machine's costs for ``traced`` on the batch ``args``/``kwargs``, with steps of ``optimizers``.

        ``optimizers`` are descriptions as :func:`describe_optimizers` makes them.
        """
        started = time.perf_counter()
        hardware = hardware_name(_normalised(self.device))
        example = {"args": list(args), "kwargs": dict(kwargs or {})}
        key = ProfileCache.key(
            traced.fingerprint(),
            example,
            "device",
            hardware,
            self.warmup,
            self.repeats,
            calibrate=self.calibrate,
            optimizers=optimizers,
        )
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and _covers(hit.node_s, traced):
            wall_s = time.perf_counter() - started
            return NodeCosts(hit.node_s, "device", hardware, wall_s, hit.measure_s, True, hit.details)
        timed = time_node_costs(
            traced,
            args,
            kwargs,
            self.device,
            self.warmup,
            self.repeats,
            calibrate=self.calibrate,
            optimizers=optimizers,
        )
        measure_s = time.perf_counter() - started
        if self.cache is not None:
            self.cache.put(key, timed.node_s, measure_s, hardware, timed.details())
        return NodeCosts(timed.node_s, "device", hardware, measure_s, measure_s, False, timed.details())

    def server_costs(
        self,
        remote: RemoteServer,
        traced: TracedModel,
        fields: Mapping[str, Any],
        optimizers: Sequence[Mapping[str, Any]] = (),
    ) -> NodeCosts:
        """The server's costs, measured by the server on its own copy of the model (the ``profile`` op).

        ``fields`` describe the model as a ``hello`` does: ``model``, ``init_args``,
        ``fingerprint``, ``leaf_modules``, ``example`` and ``graph`` (see :func:`model_fields`,
        or ``Placement.hello_fields()`` plus ``model`` and ``init_args``). ``optimizers`` (as
        :func:`describe_optimizers` makes them) are timed by the server over its own copies of
        the parameters. The request carries ``optimizers`` and ``calibrate`` only when they
        differ from the defaults, so a server that predates them still answers.
        """
        started = time.perf_counter()
        key = None
        if self.cache is not None:
            (about,) = remote.call([messages.Ping(payload=None, reply_bytes=0)])
            if about.hardware:
                key = ProfileCache.key(
                    str(fields["fingerprint"]),
                    fields["example"],
                    "server",
                    about.hardware,
                    self.warmup,
                    self.repeats,
                    torch_version=about.torch or "None",
                    model=str(fields["model"]),
                    calibrate=self.calibrate,
                    optimizers=optimizers,
                )
                hit = self.cache.get(key)
                if hit is not None and _covers(hit.node_s, traced):
                    wall_s = time.perf_counter() - started
                    return NodeCosts(hit.node_s, "server", hit.hardware, wall_s, hit.measure_s, True, hit.details)
        request = messages.Profile(
            **{name: fields[name] for name in ("model", "init_args", "fingerprint", "leaf_modules", "example")},
            graph=fields.get("graph", []),
            warmup=self.warmup,
            repeats=self.repeats,
            optimizers=[dict(optimizer) for optimizer in optimizers],
            calibrate=self.calibrate,
        )
        (reply,) = remote.call([request])
        node_s = {str(name): float(value) for name, value in reply.node_s.items()}
        missing = [info.name for info in traced.nodes if info.name not in node_s]
        if missing:
            raise RuntimeError(f"the server's profile lacks node(s) {missing[:8]}; is it serving the same model?")
        wall_s = time.perf_counter() - started
        details = dict(reply.calibration)
        if self.cache is not None and key is not None:
            self.cache.put(key, node_s, float(reply.measure_s), reply.hardware, details)
        return NodeCosts(node_s, "server", reply.hardware, wall_s, float(reply.measure_s), False, details)


def _covers(node_s: Mapping[str, float], traced: TracedModel) -> bool:
    return all(info.name in node_s for info in traced.nodes)


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON (tensors, e.g. a tensor learning rate, become lists), for cache keys."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if isinstance(v, torch.Tensor) else str(v)))


def model_fields(
    model: str, init_args: Mapping[str, Any], traced: TracedModel, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """What a ``profile`` op needs to rebuild and check the model on the server (shapes, never data)."""
    return {
        "model": model,
        "init_args": dict(init_args),
        "fingerprint": traced.fingerprint(),
        "graph": graph_summary(traced.graph_module),
        "leaf_modules": list(traced.leaf_modules),
        "example": {"args": example_skeleton(list(args)), "kwargs": example_skeleton(dict(kwargs))},
    }


def profile_builder(
    profiler: Profiler,
    remote: RemoteServer,
    model: str,
    init_args: Mapping[str, Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    measure_the_link: bool = True,
    report: Callable[[str], None] | None = None,
    optimizers: Sequence[Mapping[str, Any]] = (),
) -> Callable[[TracedModel, Link], Profile]:
    """A ``profile_builder`` for :func:`~lightning_split.runtime.placement.place_model` that measures.

    The builder times the device side here and the server side through ``remote`` (both
    cached by ``profiler``), and, with ``measure_the_link``, replaces the link it is given by
    the one measured over ``remote`` (keep it ``False`` to plan for a link given by the user,
    or on an embedded server, whose loopback says nothing about a real network). Each step's
    one-line account goes to ``report`` (e.g. ``log.info``). ``optimizers`` (see
    :func:`describe_optimizers`) add their steps to the parameter nodes on both sides.
    """

    def build(traced: TracedModel, link: Link) -> Profile:
        device = profiler.device_costs(traced, args, kwargs, optimizers)
        server = profiler.server_costs(remote, traced, model_fields(model, init_args, traced, args, kwargs), optimizers)
        extra: dict[str, Any] = {"model": model, "link_source": "given"}
        if measure_the_link:
            probe = typical_payload_bytes(traced)
            link = measure_link(remote, probe, probe)
            extra["link_source"] = "measured"
        for costs in (device, server):
            extra[f"{costs.side}_hardware"] = costs.hardware
            extra[f"{costs.side}_cached"] = costs.cached
            extra.update(costs.extras())
            if report is not None:
                report(costs.describe())
        return measured_profile(traced, device.node_s, server.node_s, link, extra)

    return build


def measured_profile(
    traced: TracedModel,
    device_s: Mapping[str, float],
    server_s: Mapping[str, float],
    link: Link,
    extra: Mapping[str, Any] | None = None,
) -> Profile:
    """A profile (``docs/profile-format.md``) of ``traced`` with the given node costs and link.

    Node fields (kind, inputs, out_bytes, and the ``op``/``module``/``flops``/``shape`` extras)
    are those of :func:`~lightning_split.costs.estimate.estimate_profile`; only the costs differ.
    ``extra`` is merged into the profile's top-level extra fields (e.g. hardware names,
    ``server_s_source``).

    Raises:
        ValueError: a cost mapping lacks nodes of the trace (named).
    """
    for label, costs in (("device_s", device_s), ("server_s", server_s)):
        missing = [info.name for info in traced.nodes if info.name not in costs]
        if missing:
            raise ValueError(f"{label} lacks {len(missing)} node(s) of the trace: {missing[:8]}")
    base = estimate_profile(traced, link)
    nodes = [
        dataclasses.replace(node, device_s=float(device_s[node.name]), server_s=float(server_s[node.name]))
        if node.kind == "op"
        else node
        for node in base.nodes
    ]
    top = {
        "batch_size": traced.batch_size,
        "fingerprint": traced.fingerprint(),
        "estimated": False,
        "device_s_source": "measured",
        "server_s_source": "measured",
        **dict(extra or {}),
    }
    return Profile(nodes, list(base.outputs), link, top)
