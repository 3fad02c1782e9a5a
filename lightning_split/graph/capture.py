"""Capture a model as a cost graph: torch.fx trace plus one recorded run.

:func:`trace_module` symbolically traces a module (a plain ``nn.Module`` or a
``LightningModule``; its ``forward`` is traced) into a ``torch.fx.GraphModule`` and then runs
that graph once on example inputs to record, per node, what it outputs (shapes, bytes), what
parameters it reads and how many forward FLOPs it performs. The result, a
:class:`TracedModel`, is what the estimator and the profiler turn into a
:class:`~lightning_split.planning.profile.Profile`, and what the split programs are cut from.

Design points:

- *Cost nodes* are the fx placeholders and ``call_module`` / ``call_function`` /
  ``call_method`` nodes. ``get_attr`` nodes (parameters, buffers, constants) are not nodes
  of the cost graph (``docs/cost-model.md``); the nodes that read them list them in ``params``.
- Non-tensor arguments of ``forward`` (flags, ``None``, ints, strings), including defaults
  that were not passed, are fixed at their example values while tracing so Python branches
  on them resolve. They get no placeholder: ``graph_module`` takes only the tensor
  arguments; :meth:`TracedModel.graph_args` maps a call of the original ``forward`` onto it.
- A submodule whose ``forward`` fx cannot trace (control flow on tensor values, calls fx
  does not support) is retried as an opaque leaf (one ``call_module`` node), innermost
  failing submodule first, until the trace succeeds; the leaves and reasons are reported in
  :attr:`TracedModel.auto_leaves` and in a warning. Only an untraceable root ``forward``
  is an error.
- The recording run has no side effects on the model: no autograd, buffers (BatchNorm
  running statistics) and train/eval flags restored, the CPU RNG forked, example tensors
  cloned (in-place ops on an input must not change the caller's batch).

fx specialises the traced graph on Python values read while tracing, including the
``training`` flag of traced-through (non-leaf) modules; trace in the mode you train in.
``torch.nn`` leaves (Dropout, BatchNorm) still read their flag at run time.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import operator
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["NodeInfo", "TraceError", "TracedModel", "graph_fingerprint", "trace_module"]

COST_OPS = ("placeholder", "call_module", "call_function", "call_method")
VALUE_BYTES = 8  # what a non-tensor output (int, float, size entry, None) is counted as


class TraceError(RuntimeError):
    """The model cannot be captured: the message names the module (path and class), why, and the fix."""


@dataclass
class NodeInfo:
    """One cost node of a traced model with what the recording run measured.

    Attributes:
        name: fx node name (unique within the graph).
        op: ``"placeholder"``, ``"call_module"``, ``"call_function"`` or ``"call_method"``.
        target: module path (call_module), function qualname (call_function), method name
            (call_method) or argument name (placeholder).
        module_path: the called module's path for call_module nodes; otherwise the innermost
            module the node was traced in (``None`` for nodes of the root's own forward).
        inputs: names of the cost nodes whose outputs this node consumes (never get_attr names).
        out_bytes: bytes of all tensors the node outputs (containers summed); each non-tensor
            value counts 8 bytes (a ``torch.Size`` counts 8 per dimension).
        out_meta: the output's structure with leaves ``("tensor", shape, dtype)`` or
            ``("value", type name)``; tuples, lists and dicts are kept as such.
        param_bytes: bytes of the parameters and buffers the node reads (each tensor once).
        params: state_dict-style names (relative to the traced root) of those parameters and buffers;
            tensor constants fx created are listed by their GraphModule attribute name.
        flops: forward FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (0 if none).
    """

    name: str
    op: str
    target: str
    module_path: str | None
    inputs: tuple[str, ...]
    out_bytes: int
    out_meta: Any
    param_bytes: int
    params: tuple[str, ...]
    flops: int


@dataclass
class TracedModel:
    """A traced model: the fx graph and its cost nodes.

    Attributes:
        graph_module: the fx trace of the original module; it shares the module's submodules,
            parameters and buffers by reference (no weights are copied). It takes only the
            tensor arguments of ``forward`` (see :meth:`graph_args`).
        nodes: cost nodes in graph order (placeholders and calls; no get_attr).
        outputs: names of the cost nodes the model returns, in the order they appear in the
            returned structure, each once. A returned parameter or constant (get_attr) or a
            Python constant is not a node and is left out.
        leaf_modules: paths of the modules traced as opaque leaves because the user asked
            (by path or class) or because they were not traceable; ``torch.nn`` leaves are
            not listed.
        auto_leaves: path -> reason, for the submodules that became leaves automatically.
        batch_size: first dimension of the first example tensor (``None`` without one).
        concrete_args: the non-tensor ``forward`` arguments the graph was specialised on.
    """

    graph_module: fx.GraphModule
    nodes: list[NodeInfo]
    outputs: list[str]
    leaf_modules: tuple[str, ...]
    auto_leaves: dict[str, str]
    batch_size: int | None
    concrete_args: dict[str, Any] = field(default_factory=dict)
    _signature: inspect.Signature | None = field(default=None, repr=False, compare=False)
    _slots: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    _concrete_slots: tuple[tuple[str, Any], ...] = field(default=(), repr=False, compare=False)
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
            TraceError: the call does not fit ``forward``'s signature, or a non-tensor argument
                differs from the value the graph was specialised on (retrace with it).
        """
        if self._signature is None:
            return args + tuple(kwargs.values())
        bound = _bind(self._signature, args, kwargs, type(self.graph_module).__name__)
        for name, slot in self._concrete_slots:
            value, given = self.concrete_args[name], _lookup(bound, slot)
            if not _same_value(given, value):
                raise TraceError(
                    f"the graph was traced with {name}={value!r} but is called with {name}={given!r}; "
                    "fx specialises on non-tensor arguments, so trace again with the new value"
                )
        return tuple(_lookup(bound, slot) for slot in self._slots)


def trace_module(
    module: nn.Module,
    example_args: tuple[Any, ...],
    example_kwargs: Mapping[str, Any] | None = None,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
) -> TracedModel:
    """Trace ``module.forward`` with torch.fx and measure every node on the example inputs.

    Args:
        module: the model (``nn.Module`` or ``LightningModule``); never modified.
        example_args: positional example arguments of ``forward`` (a real batch: shapes,
            bytes and FLOPs are measured on it).
        example_kwargs: keyword example arguments of ``forward``.
        leaf_modules: module paths (``"backbone.layer3"``) or classes to keep opaque: each
            call becomes one node. Use it for submodules fx cannot trace or that should
            never be split.

    Returns:
        The :class:`TracedModel`.

    Raises:
        TraceError: the root ``forward`` is not traceable, a leaf path is unknown, the example
            inputs do not fit ``forward``, or the traced graph fails on them.

    Uninitialised lazy modules (``nn.LazyLinear``, ...) are materialised by the recording run,
    as by any first forward call; parameters are not snapshotted, everything else is restored.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"trace_module needs an nn.Module, got {type(module).__name__}")
    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    example_kwargs = dict(example_kwargs or {})
    cls_name = type(module).__qualname__
    leaf_paths, leaf_types = _split_leaf_spec(module, leaf_modules)

    forward_sig = inspect.signature(inspect.unwrap(type(module).forward))
    signature = forward_sig.replace(parameters=list(forward_sig.parameters.values())[1:])  # drop self
    bound = _bind(signature, example_args, example_kwargs, cls_name)
    concrete, concrete_slots, slots = _classify_arguments(signature, bound)

    auto_leaves: dict[str, str] = {}
    for _ in range(len(list(module.modules())) + 1):
        tracer = _SplitTracer(leaf_paths | set(auto_leaves), leaf_types, bound, slots)
        try:
            graph = tracer.trace(module)
            break
        except Exception as exc:
            failure = tracer.failure if tracer.failure is not None and _caused_by(exc, tracer.failure[2]) else None
            if failure is None:
                raise TraceError(
                    f"cannot trace the forward of the root module ({cls_name}): {_one_line(exc)}. "
                    f"Make {cls_name}.forward fx-traceable (no Python control flow on tensor values, no "
                    "unsupported calls), or move the untraceable part into a submodule, which is then "
                    "traced as an opaque leaf automatically or via leaf_modules=[...]"
                ) from exc
            path, sub_cls, sub_exc = failure
            if path in auto_leaves or path in leaf_paths:
                raise TraceError(
                    f"submodule {path!r} ({sub_cls.__qualname__}) fails to trace even as a leaf: "
                    f"{_one_line(sub_exc)}; pass a parent of it in leaf_modules=[...]"
                ) from exc
            auto_leaves[path] = _one_line(sub_exc)
    else:  # pragma: no cover - each round adds a new leaf, so this bound is never reached
        raise TraceError(f"could not trace {cls_name}: gave up after making {list(auto_leaves)} leaves")

    if auto_leaves:
        listed = "; ".join(f"{path} ({_first_sentence(reason)})" for path, reason in auto_leaves.items())
        warnings.warn(
            f"lightning_split: {len(auto_leaves)} submodule(s) of {cls_name} are not fx-traceable and "
            f"run as opaque leaves: {listed}. Pass leaf_modules=[...] to choose leaves yourself.",
            stacklevel=2,
        )

    gm = fx.GraphModule(tracer.root, graph, class_name=_identifier(type(module).__name__))
    gm.training = module.training  # the flag only: gm.train() would recurse into the user's modules

    leaves = dict.fromkeys(leaf_paths)
    leaves.update(dict.fromkeys(auto_leaves))
    for node in graph.nodes:
        if node.op == "call_module" and leaf_types and isinstance(gm.get_submodule(node.target), leaf_types):
            leaves[str(node.target)] = None

    inputs = [_lookup(bound, slot) for _, slot in slots]
    records = _record(module, gm, inputs)
    if _thread_in_place_ops(gm, records):
        gm.recompile()
    nodes = _node_infos(gm, records)
    return TracedModel(
        graph_module=gm,
        nodes=nodes,
        outputs=_returned_names(gm.graph),
        leaf_modules=tuple(leaves),
        auto_leaves=auto_leaves,
        batch_size=_batch_size(inputs),
        concrete_args=concrete,
        _signature=signature,
        _slots=tuple(slot for _, slot in slots),
        _concrete_slots=concrete_slots,
    )


def graph_fingerprint(gm: fx.GraphModule) -> str:
    """sha256 hex of a graph's structure, stable across processes.

    Covers, per node, its op, name, readable target and its args/kwargs with nodes replaced
    by their names; for call_module nodes the module's class and ``extra_repr`` (so
    ``Linear(4, 8)`` and ``Linear(4, 16)`` differ), for get_attr nodes the tensor's shape and
    dtype. Weights, the example batch and object addresses do not enter it.
    """
    digest = hashlib.sha256()
    for node in gm.graph.nodes:
        entry: list[Any] = [node.op, node.name, _readable_target(node), _structure(node.args), _structure(node.kwargs)]
        if node.op == "call_module":
            sub = gm.get_submodule(str(node.target))
            entry.append([f"{type(sub).__module__}.{type(sub).__qualname__}", sub.extra_repr()])
        elif node.op == "get_attr":
            value = _get_attr(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                entry.append([list(value.shape), str(value.dtype)])
        digest.update(json.dumps(entry, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


class _SplitTracer(fx.Tracer):
    """fx tracer with user/auto leaves, fixed non-tensor arguments and failure localisation.

    ``failure`` is ``(path, class, exception)`` of the innermost submodule whose traced
    ``forward`` raised; the retry loop in :func:`trace_module` turns it into a leaf.
    """

    def __init__(
        self,
        leaf_paths: set[str],
        leaf_types: tuple[type, ...],
        bound: inspect.BoundArguments,
        slots: list[tuple[str, Any]],
    ) -> None:
        super().__init__()
        self.leaf_paths = leaf_paths
        self.leaf_types = leaf_types
        self.bound = bound
        self.slots = slots
        self.failure: tuple[str, type, BaseException] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_paths or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        path = self.path_of_module(m)  # raises for unregistered modules: the caller is then the culprit
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if self.failure is None:
                self.failure = (path, type(m), exc)
            raise

    def create_args_for_root(
        self, root_fn: Callable[..., Any], is_module: bool, concrete_args: Any = None
    ) -> tuple[Callable[..., Any], list[Any]]:
        """One placeholder per tensor-carrying argument; everything else is passed as its example value."""
        proxies = {name: self.create_proxy("placeholder", name, (), {}) for name, _ in self.slots}
        arguments = dict(self.bound.arguments)
        for name, slot in self.slots:
            _assign(arguments, self.bound.signature, slot, proxies[name])
        call = inspect.BoundArguments(self.bound.signature, arguments)  # type: ignore[arg-type]
        root = self.root

        def traced_forward():  # unannotated: fx would copy a return annotation into the generated code
            return root_fn(root, *call.args, **call.kwargs)

        return traced_forward, []


def _split_leaf_spec(module: nn.Module, leaf_modules: Iterable[str | type]) -> tuple[set[str], tuple[type, ...]]:
    paths: set[str] = set()
    types: list[type] = []
    known = dict(module.named_modules())
    if isinstance(leaf_modules, (str, type)):  # a single entry, not an iterable of characters
        leaf_modules = [leaf_modules]
    for item in leaf_modules:
        if isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)
        elif isinstance(item, str):
            if item not in known or item == "":
                near = sorted(p for p in known if p and (item in p or p.endswith(item.rsplit(".", 1)[-1])))[:8]
                raise TraceError(
                    f"leaf_modules names {item!r}, which is not a submodule path of {type(module).__qualname__}"
                    f"{f'; similar paths: {near}' if near else ''}"
                )
            paths.add(item)
        else:
            raise TypeError(f"leaf_modules entries must be module paths or nn.Module classes, got {item!r}")
    return paths, tuple(types)


def _bind(signature: inspect.Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any], cls_name: str) -> Any:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TraceError(f"the example inputs do not fit {cls_name}.forward{signature}: {exc}") from exc
    bound.apply_defaults()
    return bound


def _classify_arguments(
    signature: inspect.Signature, bound: inspect.BoundArguments
) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...], list[tuple[str, Any]]]:
    """Split forward's arguments into fixed non-tensor values and placeholder slots.

    A slot addresses one argument: a parameter name, or ``(name, index)`` / ``(name, key)``
    for an entry of ``*args`` / ``**kwargs``. Returns the fixed values by label, the
    (label, slot) pairs to check them later, and (placeholder name, slot) pairs.
    """
    concrete: dict[str, Any] = {}
    concrete_slots: list[tuple[str, Any]] = []
    slots: list[tuple[str, Any]] = []
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind == inspect.Parameter.VAR_POSITIONAL:
            entries: list[tuple[str, Any, Any]] = [(f"{name}_{i}", (name, i), item) for i, item in enumerate(value)]
        elif kind == inspect.Parameter.VAR_KEYWORD:
            entries = [(str(key), (name, key), item) for key, item in value.items()]
        else:
            entries = [(name, name, value)]
        for label, slot, item in entries:
            if _has_tensor(item):
                slots.append((label, slot))
            else:
                concrete[label] = item
                concrete_slots.append((label, slot))
    return concrete, tuple(concrete_slots), slots


def _lookup(bound: inspect.BoundArguments, slot: Any) -> Any:
    try:
        if isinstance(slot, tuple):
            name, key = slot
            return bound.arguments[name][key]
        return bound.arguments[slot]
    except (KeyError, IndexError):
        return inspect.Parameter.empty


def _assign(arguments: dict[str, Any], signature: inspect.Signature, slot: Any, value: Any) -> None:
    if isinstance(slot, tuple):
        name, key = slot
        container = arguments[name]
        if signature.parameters[name].kind == inspect.Parameter.VAR_POSITIONAL:
            items = list(container)
            items[key] = value
            arguments[name] = tuple(items)
        else:
            arguments[name] = {**container, key: value}
    else:
        arguments[slot] = value


def _same_value(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:
        return False


def _has_tensor(value: Any) -> bool:
    return any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(value))


def _caused_by(exc: BaseException, culprit: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if current is culprit:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    return f"{type(exc).__name__}: {message}"[:300]


def _first_sentence(text: str) -> str:
    head = text.split(". ", 1)[0]
    return head if len(head) <= 120 else head[:117] + "..."


def _identifier(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"Traced_{cleaned}"


def _returned_names(graph: fx.Graph) -> list[str]:
    output = next(node for node in reversed(graph.nodes) if node.op == "output")
    found: dict[str, None] = {}
    fx.node.map_arg(output.args, lambda n: found.setdefault(n.name, None) if n.op in COST_OPS else None)
    return list(found)


def _batch_size(inputs: list[Any]) -> int | None:
    for leaf in pytree.tree_leaves(inputs):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    return None


# ---------------------------------------------------------------------------------------------
# The recording run


@dataclass
class _Record:
    out_bytes: int
    out_meta: Any
    flops: int
    returns_first_arg: bool = False  # the output is the very object passed as first argument


class _Recorder(fx.Interpreter):
    """Runs the graph and keeps, per cost node, the output's size and structure and its FLOPs."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.records: dict[str, _Record] = {}
        self.counter = FlopCounterMode(display=False)

    def run_node(self, n: fx.Node) -> Any:
        if n.op not in COST_OPS:
            return super().run_node(n)
        before = self.counter.get_total_flops()
        try:
            result = super().run_node(n)
        except Exception as exc:
            where = f" (module {n.target!r})" if n.op == "call_module" else ""
            raise TraceError(
                f"the traced graph fails at node {n.name!r}{where} on the example inputs: {_one_line(exc)}"
            ) from exc
        meta, size = _describe(result)
        flops = int(self.counter.get_total_flops() - before)
        first = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        same = isinstance(result, torch.Tensor) and first is not None and self.env.get(first) is result
        self.records[n.name] = _Record(size, meta, flops, same)
        return result


def _record(module: nn.Module, gm: fx.GraphModule, inputs: list[Any]) -> dict[str, _Record]:
    """Run ``gm`` once on (clones of) ``inputs`` without side effects on ``module``."""
    recorder = _Recorder(gm)
    inputs = pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, inputs)
    with _PreservedState(module, gm), torch.no_grad(), torch.random.fork_rng(devices=[]), recorder.counter:
        recorder.run(*inputs)
    return recorder.records


def _thread_in_place_ops(gm: fx.GraphModule, records: dict[str, _Record]) -> bool:
    """Make in-place mutations explicit data flow: later readers of a mutated value read the in-place node.

    ``relu.add_(1)`` has no users of its own in fx (later code keeps using ``relu``), so a
    cost graph would see no edge from it and could place it after, or apart from, the nodes
    that read the mutated tensor. The in-place node returns the same tensor object (checked
    in the recording run), so redirecting every later use of the mutated value to it keeps
    the computation and adds the missing edges. Mutations through a view (``x.view(...).add_``)
    are not tracked. Returns whether the graph changed.
    """
    order = {node: index for index, node in enumerate(gm.graph.nodes)}
    changed = False
    for node in list(gm.graph.nodes):
        record = records.get(node.name)
        if record is None or not record.returns_first_arg or not _is_in_place(gm, node):
            continue
        mutated = node.args[0]
        for user in list(mutated.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(mutated, node)
                changed = True
    return changed


def _is_in_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is an in-place op by name: ``x.add_()``, ``torch.relu_``, ``inplace=True``."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if name.endswith("_") and not name.startswith("__"):
            return True
        if "inplace" in node.kwargs:
            return node.kwargs["inplace"] is True
        try:
            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return bound.arguments.get("inplace") is True
    if node.op == "call_module":
        sub = gm.get_submodule(str(node.target))
        return type(sub).__module__.startswith("torch.nn") and getattr(sub, "inplace", False) is True
    return False


class _PreservedState:
    """Snapshot buffers (by owner and name) and train/eval flags; put them back on exit."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for root in self.modules for m in root.modules()]
        self.buffers: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]] = []
        seen: set[int] = set()
        for root in self.modules:
            for owner in root.modules():
                if id(owner) in seen:
                    continue
                seen.add(id(owner))
                for name, buf in owner._buffers.items():
                    copy = buf.detach().clone() if buf is not None else None
                    self.buffers.append((owner, name, buf, copy))

    def __exit__(self, *exc_info: object) -> None:
        with torch.no_grad():
            for owner, name, original, copy in self.buffers:
                owner._buffers[name] = original
                if original is not None and copy is not None:
                    original.copy_(copy)
        for m, mode in self.modes:
            m.training = mode


def _describe(value: Any) -> tuple[Any, int]:
    """The output structure (``("tensor", shape, dtype)`` / ``("value", type)`` leaves) and its bytes."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype)), value.numel() * value.element_size()
    if isinstance(value, torch.Size):
        return ("value", "Size"), VALUE_BYTES * max(1, len(value))
    if isinstance(value, (tuple, list)):
        parts = [_describe(item) for item in value]
        metas = [meta for meta, _ in parts]
        return (tuple(metas) if isinstance(value, tuple) else metas), sum(size for _, size in parts)
    if isinstance(value, dict):
        parts_d = {key: _describe(item) for key, item in value.items()}
        return {key: meta for key, (meta, _) in parts_d.items()}, sum(size for _, size in parts_d.values())
    return ("value", type(value).__name__), VALUE_BYTES


# ---------------------------------------------------------------------------------------------
# Node metadata


def _node_infos(gm: fx.GraphModule, records: dict[str, _Record]) -> list[NodeInfo]:
    infos: list[NodeInfo] = []
    module_params: dict[str, tuple[tuple[str, ...], int]] = {}
    for node in gm.graph.nodes:
        if node.op not in COST_OPS:
            continue
        names: list[str] = []
        tensors: dict[int, int] = {}
        if node.op == "call_module":
            target = str(node.target)
            if target not in module_params:
                module_params[target] = _module_params(gm.get_submodule(target), target)
            names.extend(module_params[target][0])
            tensors[-1] = module_params[target][1]
        for source in node.all_input_nodes:
            if source.op == "get_attr":
                value = _get_attr(gm, str(source.target))
                names.append(str(source.target))
                if isinstance(value, torch.Tensor):
                    tensors[id(value)] = value.numel() * value.element_size()
        record = records.get(node.name, _Record(0, None, 0))
        infos.append(
            NodeInfo(
                name=node.name,
                op=node.op,
                target=_readable_target(node),
                module_path=node_module_path(node),
                inputs=tuple(dict.fromkeys(s.name for s in node.all_input_nodes if s.op in COST_OPS)),
                out_bytes=record.out_bytes,
                out_meta=record.out_meta,
                param_bytes=sum(tensors.values()),
                params=tuple(dict.fromkeys(names)),
                flops=record.flops,
            )
        )
    return infos


def _module_params(sub: nn.Module, prefix: str) -> tuple[tuple[str, ...], int]:
    """State_dict-style names of a module's recursive parameters and buffers, and their bytes (each tensor once)."""
    names: list[str] = []
    sizes: dict[int, int] = {}
    named: Iterator[tuple[str, torch.Tensor]] = (
        item
        for items in (sub.named_parameters(remove_duplicate=False), sub.named_buffers(remove_duplicate=False))
        for item in items
    )
    for name, tensor in named:
        names.append(f"{prefix}.{name}" if prefix else name)
        sizes[id(tensor)] = tensor.numel() * tensor.element_size()
    return tuple(names), sum(sizes.values())


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    try:
        return operator.attrgetter(target)(gm)
    except AttributeError:
        return None


def node_module_path(node: fx.Node) -> str | None:
    """The called module's path (call_module) or the innermost module a node was traced in."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = next(reversed(stack.values()))[0]
        return path if isinstance(path, str) and path else None
    return None


def _readable_target(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    try:
        return fx.node._get_qualified_name(target)  # type: ignore[arg-type]
    except Exception:
        module = getattr(target, "__module__", None) or ""
        name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or type(target).__name__
        return f"{module}.{name}" if module else str(name)


def _structure(value: Any) -> Any:
    """JSON-able, address-free form of fx args: nodes by name, containers tagged, objects by type."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [_structure(item) for item in value]}
    if isinstance(value, dict):
        return {"dict": [[_structure(key), _structure(item)] for key, item in value.items()]}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, slice):
        return {"slice": [_structure(value.start), _structure(value.stop), _structure(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return {type(value).__name__: str(value)}
    if isinstance(value, torch.Tensor):
        return {"tensor": [list(value.shape), str(value.dtype)]}
    if callable(value) and hasattr(value, "__qualname__"):
        return {"callable": f"{getattr(value, '__module__', '')}.{value.__qualname__}"}
    return {"object": f"{type(value).__module__}.{type(value).__qualname__}"}
