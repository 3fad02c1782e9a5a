"""Capture a model as a cost graph: torch.fx trace (or torch.export) plus one recorded run.

:func:`trace_module` symbolically traces a module (a plain ``nn.Module`` or a
``LightningModule``; its ``forward`` is traced) into a ``torch.fx.GraphModule`` and then runs
that graph once on example inputs to record, per node, what it outputs (shapes, bytes), what
parameters it reads and how many forward FLOPs it performs. Where fx cannot trace the whole
model (Hugging Face models, shape-dependent branches), the module is captured with
``torch.export`` instead (:mod:`~lightning_split.graph.exporting`), which keeps only the
submodules it fails in whole. The result, a
:class:`TracedModel`, is what the estimator and the profiler turn into a
:class:`~lightning_split.planning.profile.Profile`, and what the split programs are cut from.

The steps each have their module:

- :mod:`~lightning_split.graph.arguments`: non-tensor arguments of ``forward`` are fixed at
  their example values; ``graph_module`` takes only the tensor arguments, and
  :meth:`TracedModel.graph_args` maps a call of the original ``forward`` onto it.
- :mod:`~lightning_split.graph.leaves`: user leaves, and untraceable submodules retried as
  opaque leaves (reported in :attr:`TracedModel.auto_leaves` and a warning).
- :mod:`~lightning_split.graph.recording`: the side-effect-free recording run.
- :mod:`~lightning_split.graph.nodes` and :mod:`~lightning_split.graph.metadata`: the cost
  nodes (:class:`NodeInfo`) and the metadata of their outputs.
- :mod:`~lightning_split.graph.fingerprint`: the graph's structural fingerprint.
- :mod:`~lightning_split.graph.structure`: what ``forward`` returns, rebuilt with its own type.

fx specialises the traced graph on Python values read while tracing, including the
``training`` flag of traced-through (non-leaf) modules; trace in the mode you train in.
``torch.nn`` leaves (Dropout, BatchNorm) still read their flag at run time. An export also
specialises on the example's shapes (see :meth:`TracedModel.graph_args`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from lightning_split.graph.arguments import assign, bind, classify_arguments, lookup, same_value
from lightning_split.graph.errors import TraceError
from lightning_split.graph.exporting import ExportedGraph, ExportFailure, export_module
from lightning_split.graph.fingerprint import graph_fingerprint
from lightning_split.graph.leaves import leaf_paths_of, split_leaf_spec, trace_with_auto_leaves, warn_auto_leaves
from lightning_split.graph.nodes import COST_OPS, NodeInfo, node_infos
from lightning_split.graph.recording import record, thread_in_place_ops
from lightning_split.graph.structure import RETURNED, OutputStructure, ReturnedValue, output_leaves

__all__ = ["NodeInfo", "TraceError", "TracedModel", "graph_fingerprint", "trace_module"]


@dataclass
class TracedModel:
    """A traced model: the fx graph and its cost nodes.

    Attributes:
        graph_module: the fx trace (or the rebuilt ``torch.export`` capture) of the original
            module; it shares the module's submodules, parameters and buffers by reference (no
            weights are copied). It takes only the tensor arguments of ``forward`` (see
            :meth:`graph_args`). ``graph_module.meta[RETURNED]`` rebuilds what ``forward``
            returns from its nodes' values (same type and structure as unsplit).
        nodes: cost nodes in graph order (placeholders and calls; no get_attr).
        outputs: names of the cost nodes the model returns, in the order they appear in the
            returned structure, each once. A returned parameter or constant (get_attr) or a
            Python constant is not a node and is left out.
        leaf_modules: paths of the modules traced as opaque leaves because the user asked
            (by path or class) or because they were not traceable; ``torch.nn`` leaves are
            not listed by fx captures, the Dropout and BatchNorm layers an export keeps whole are.
        auto_leaves: path -> reason, for the submodules that became leaves automatically.
        batch_size: first dimension of the first example tensor (``None`` without one).
        concrete_args: the non-tensor ``forward`` arguments the graph was specialised on.
        method: ``"fx"`` or ``"export"``: how the graph was captured (the server captures its
            copy of the model the same way).
    """

    graph_module: fx.GraphModule
    nodes: list[NodeInfo]
    outputs: list[str]
    leaf_modules: tuple[str, ...]
    auto_leaves: dict[str, str]
    batch_size: int | None
    concrete_args: dict[str, Any] = field(default_factory=dict)
    method: str = "fx"
    _signature: inspect.Signature | None = field(default=None, repr=False, compare=False)
    _slots: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    _concrete_slots: tuple[tuple[str, Any], ...] = field(default=(), repr=False, compare=False)
    _shapes: Any = field(default=None, repr=False, compare=False)
    _index: dict[str, NodeInfo] = field(default_factory=dict, init=False, repr=False, compare=False)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def fingerprint(self) -> str:
        """sha256 hex of the graph structure (see :func:`graph_fingerprint`)."""
        if self._fingerprint is None:
            self._fingerprint = graph_fingerprint(self.graph_module)
        return self._fingerprint

    def node(self, name: str) -> NodeInfo:
        """The cost node called ``name`` (KeyError naming close matches if there is none)."""
        if not self._index:
            self._index = {info.name: info for info in self.nodes}
        try:
            return self._index[name]
        except KeyError:
            near = [n for n in self._index if name in n or n in name][:8]
            raise KeyError(f"no cost node {name!r} in the trace; similar: {near}") from None

    def graph_args(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """The positional arguments of :attr:`graph_module` for a call ``forward(*args, **kwargs)``.

        Raises:
            TraceError: the call does not fit ``forward``'s signature, a non-tensor argument
                differs from the value the graph was specialised on (retrace with it), or, for
                an export, a tensor's shape differs from the example's.
        """
        if self._signature is None:
            return args + tuple(kwargs.values())
        bound = bind(self._signature, args, kwargs, type(self.graph_module).__name__)
        for name, slot in self._concrete_slots:
            value, given = self.concrete_args[name], lookup(bound, slot)
            if not same_value(given, value):
                raise TraceError(
                    f"the graph was traced with {name}={value!r} but is called with {name}={given!r}; "
                    "fx specialises on non-tensor arguments, so trace again with the new value"
                )
        values = tuple(lookup(bound, slot) for slot in self._slots)
        if self._shapes is not None and _shapes(values) != self._shapes:
            raise TraceError(
                f"the graph was captured by torch.export for input shapes {self._shapes} but is called with "
                f"{_shapes(values)}; an export has static shapes (give every batch the same shape, e.g. "
                "DataLoader(drop_last=True))"
            )
        return values


def trace_module(
    module: nn.Module,
    example_args: tuple[Any, ...],
    example_kwargs: Mapping[str, Any] | None = None,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    method: str = "auto",
) -> TracedModel:
    """Capture ``module.forward`` as a graph and measure every node on the example inputs.

    Args:
        module: the model (``nn.Module`` or ``LightningModule``); never modified.
        example_args: positional example arguments of ``forward`` (a real batch: shapes,
            bytes and FLOPs are measured on it).
        example_kwargs: keyword example arguments of ``forward``.
        leaf_modules: module paths (``"backbone.layer3"``) or classes to keep opaque: each
            call becomes one node. Use it for submodules fx cannot trace or that should
            never be split.
        method: ``"fx"`` (symbolic tracing, untraceable submodules as leaves), ``"export"``
            (``torch.export``), or ``"auto"``: fx where it traces the whole model, else the
            export when it keeps less of the model whole than fx's automatic leaves.

    Returns:
        The :class:`TracedModel`.

    Raises:
        TraceError: the root ``forward`` is neither fx-traceable nor exportable, a leaf path is
            unknown, the example inputs do not fit ``forward``, or the traced graph fails on them.

    Uninitialised lazy modules (``nn.LazyLinear``, ...) are materialised by the recording run,
    as by any first forward call; parameters are not snapshotted, everything else is restored.

    An ambient ``torch.autocast`` (a mixed-precision training step's first forward) is turned off
    while capturing: the graph is the module's own, in its own dtypes, the same on the device and
    on a server that captures without one; the programs then run under whatever autocast their
    caller opens.
    """
    with _autocast_off():
        return _capture(module, example_args, example_kwargs, leaf_modules, method)


def _autocast_off() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for device_type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
    return stack


def _capture(
    module: nn.Module,
    example_args: tuple[Any, ...],
    example_kwargs: Mapping[str, Any] | None,
    leaf_modules: Iterable[str | type[nn.Module]],
    method: str,
) -> TracedModel:
    if not isinstance(module, nn.Module):
        raise TypeError(f"trace_module needs an nn.Module, got {type(module).__name__}")
    if method not in CAPTURE_METHODS:
        raise ValueError(f"method must be one of {CAPTURE_METHODS}, got {method!r}")
    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    example_kwargs = dict(example_kwargs or {})
    leaf_paths, leaf_types = split_leaf_spec(module, leaf_modules)

    forward_sig = inspect.signature(inspect.unwrap(type(module).forward))
    signature = forward_sig.replace(parameters=list(forward_sig.parameters.values())[1:])  # drop self
    bound = bind(signature, example_args, example_kwargs, type(module).__qualname__)
    call = _Call(signature, bound, *classify_arguments(signature, bound))

    fx_trace: tuple[Any, ...] | None = None
    fx_error: TraceError | None = None
    if method != "export":
        try:
            fx_trace = trace_with_auto_leaves(module, leaf_paths, leaf_types, bound, call.slots)
        except TraceError as exc:
            if method == "fx":
                raise
            fx_error = exc
    if method == "fx" or (fx_trace is not None and not fx_trace[2]):
        assert fx_trace is not None
        return _from_fx(module, call, fx_trace, leaf_paths, leaf_types)
    exported = _try_export(module, call, [*leaf_paths, *_paths_of_types(module, leaf_types)], fx_trace, fx_error)
    if exported is None:
        assert fx_trace is not None
        return _from_fx(module, call, fx_trace, leaf_paths, leaf_types)
    warn_auto_leaves(type(module).__qualname__, exported.auto_opaque, "capturable by torch.export")
    return _finish(
        module,
        exported.graph_module,
        call,
        exported.structure,
        exported.constant_leaves,
        exported.opaque,
        exported.auto_opaque,
        "export",
    )


CAPTURE_METHODS = ("auto", "fx", "export")


@dataclass(frozen=True)
class _Call:
    """The example call: forward's signature, the bound arguments, fixed values and placeholder slots."""

    signature: inspect.Signature
    bound: inspect.BoundArguments
    concrete: dict[str, Any]
    concrete_slots: tuple[tuple[str, Any], ...]
    slots: list[tuple[str, Any]]

    def inputs(self) -> list[Any]:
        return [lookup(self.bound, slot) for _, slot in self.slots]

    def rebind(self, values: Sequence[Any]) -> inspect.BoundArguments:
        """The bound call with ``values`` in the placeholder slots."""
        arguments = dict(self.bound.arguments)
        for (_, slot), value in zip(self.slots, values):
            assign(arguments, self.signature, slot, value)
        return inspect.BoundArguments(self.signature, arguments)  # type: ignore[arg-type]


def _from_fx(
    module: nn.Module,
    call: _Call,
    fx_trace: tuple[Any, ...],
    leaf_paths: set[str],
    leaf_types: tuple[type, ...],
) -> TracedModel:
    tracer, graph, auto_leaves = fx_trace
    warn_auto_leaves(type(module).__qualname__, auto_leaves)
    gm = fx.GraphModule(tracer.root, graph, class_name=_identifier(type(module).__name__))
    leaves = leaf_paths_of(gm, leaf_paths, auto_leaves, leaf_types)
    return _finish(module, gm, call, tracer.structure, {}, leaves, auto_leaves, "fx")


def _try_export(
    module: nn.Module,
    call: _Call,
    opaque: list[str],
    fx_trace: tuple[Any, ...] | None,
    fx_error: TraceError | None,
) -> ExportedGraph | None:
    """The export, if it keeps less of the model whole than fx's automatic leaves (``None``: use fx).

    With no fx trace at all (the root is not fx-traceable) an export failure is the error.
    """
    try:
        exported = export_module(
            module, call.bound, call.slots, call.rebind, _identifier(type(module).__name__), opaque
        )
    except ExportFailure as failure:
        if fx_trace is not None:
            return None
        before = f"{fx_error} Capturing it with torch.export failed too" if fx_error else "torch.export failed"
        raise TraceError(
            f"{before}: {failure}. Pass leaf_modules=[...] naming the submodule that fails, or make its "
            "forward traceable"
        ) from failure
    if fx_trace is not None:
        fx_leaves = set(fx_trace[2])
        finer = all(any(p == q or p.startswith(q + ".") for q in fx_leaves) for p in exported.auto_opaque)
        if not finer or set(exported.auto_opaque) == fx_leaves:
            return None
    return exported


def _paths_of_types(module: nn.Module, leaf_types: tuple[type, ...]) -> list[str]:
    return [path for path, sub in module.named_modules() if path and leaf_types and isinstance(sub, leaf_types)]


def _finish(
    module: nn.Module,
    gm: fx.GraphModule,
    call: _Call,
    structure: OutputStructure,
    constants: dict[int, Any],
    leaf_modules: Sequence[str],
    auto_leaves: dict[str, str],
    method: str,
) -> TracedModel:
    """Record the graph on the example and assemble the :class:`TracedModel`.

    ``structure`` is what ``forward`` returned; ``constants`` are its leaves the graph does not
    return (an export returns tensors only), by position.
    """
    gm.training = module.training  # the flag only: gm.train() would recurse into the user's modules
    inputs = call.inputs()
    records = record(module, gm, inputs)
    if thread_in_place_ops(gm, records):
        gm.recompile()
    # the output node holds the structure's leaves, but for the constants an export returns apart
    outputs = iter(output_leaves(gm))
    leaves = [constants[i] if i in constants else next(outputs) for i in range(structure.size)]
    gm.meta[RETURNED] = ReturnedValue.from_leaves(structure, leaves)
    return TracedModel(
        graph_module=gm,
        nodes=node_infos(gm, records),
        outputs=_returned_names(gm.graph),
        leaf_modules=tuple(leaf_modules),
        auto_leaves=auto_leaves,
        batch_size=_batch_size(inputs),
        concrete_args=call.concrete,
        method=method,
        _signature=call.signature,
        _slots=tuple(slot for _, slot in call.slots),
        _concrete_slots=call.concrete_slots,
        _shapes=_shapes(inputs) if method == "export" else None,
    )


def _identifier(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"Traced_{cleaned}"


def _returned_names(graph: fx.Graph) -> list[str]:
    output = next(node for node in reversed(graph.nodes) if node.op == "output")
    found: dict[str, None] = {}
    fx.node.map_arg(output.args, lambda n: found.setdefault(n.name, None) if n.op in COST_OPS else None)
    return list(found)


def _shapes(values: Any) -> list[Any]:
    """The shapes (and dtypes) of the tensors in ``values``, in pytree order: what an export is specialised on."""
    return [
        (tuple(leaf.shape), str(leaf.dtype)) for leaf in pytree.tree_leaves(values) if isinstance(leaf, torch.Tensor)
    ]


def _batch_size(inputs: list[Any]) -> int | None:
    for leaf in pytree.tree_leaves(inputs):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    return None
