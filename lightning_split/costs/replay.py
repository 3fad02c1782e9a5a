"""What the node timer runs: one node, a whole pass, an optimizer step, each on fresh copies of real inputs.

Timing a node needs its real inputs: :func:`captured_values` runs the graph once under an
``fx.Interpreter`` and keeps every node's output, detached, with a flag saying whether
training would differentiate it. A :class:`NodeStep` then re-runs one node's own call
(module, function or method) on fresh copies of those inputs and takes its backward with
``torch.autograd.grad`` with respect to the inputs that need gradients and the parameters it
uses; a :class:`WholePass` does the same for the whole graph; an :class:`OptimizerStep` steps
an optimizer rebuilt over copies of the graph's parameters. Each has ``prepare`` (untimed:
make the inputs) and ``run`` (timed). Nothing of the model changes: ``autograd.grad``
returns gradients rather than writing ``.grad``, and in-place ops only touch the copies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.utils import _pytree as pytree

from lightning_split.transport.optimizers import OptimizerSpec, resolve_optimizer

__all__ = ["Call", "NodeStep", "OptimizerStep", "WholePass", "captured_values", "nbytes"]


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


def captured_values(gm: fx.GraphModule, inputs: Sequence[Any]) -> dict[fx.Node, Any]:
    """Every node's output when ``gm`` runs on ``inputs`` (tensors detached, see :class:`_Capture`)."""
    return _Capture(gm).values(inputs)


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
class Call:
    """Fresh inputs for one run of a node, and the leaves its backward differentiates."""

    args: Any
    kwargs: Any
    leaves: list[torch.Tensor]


class NodeStep:
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

    def prepare(self) -> Call:
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
        return Call(args, kwargs, leaves)

    def run_forward(self, call: Call) -> None:
        """The forward alone, recording for autograd as training does (the graph is dropped after)."""
        self.call(*call.args, **call.kwargs)

    def run(self, call: Call) -> None:
        """One forward and, if anything of it is differentiable, one backward with all-ones output gradients."""
        result = self.call(*call.args, **call.kwargs)
        outputs = [t for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not outputs or not call.leaves:
            return
        if self.grads is None:  # same shapes on every run: made once, not timed again
            self.grads = [torch.ones_like(t) for t in outputs]
        self.differentiates = True
        torch.autograd.grad(outputs, call.leaves, self.grads, allow_unused=True)


class WholePass:
    """The whole graph's forward and one backward over it, as a training step runs them (``.grad`` untouched)."""

    def __init__(self, gm: fx.GraphModule, inputs: Sequence[Any]) -> None:
        self.gm = gm
        self.inputs = list(inputs)
        self.params = [p for p in gm.parameters() if p.requires_grad]
        self.grads: list[torch.Tensor] | None = None

    def prepare(self) -> Call:
        leaves: list[torch.Tensor] = list(self.params)
        args = [pytree.tree_map(lambda v: _fresh_input(_detach_keeping_flag(v), leaves), v) for v in self.inputs]
        return Call(args, {}, leaves)

    def run(self, call: Call) -> None:
        result = self.gm(*call.args)
        outputs = [t for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not outputs or not call.leaves:
            return
        if self.grads is None:
            self.grads = [torch.ones_like(t) for t in outputs]
        torch.autograd.grad(outputs, call.leaves, self.grads, allow_unused=True)


class OptimizerStep:
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


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


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
