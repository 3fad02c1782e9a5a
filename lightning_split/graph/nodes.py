"""The cost nodes of an fx graph: which ops they are, what is known of each, and how it is read off.

*Cost nodes* are the fx placeholders and ``call_module`` / ``call_function`` /
``call_method`` nodes (:data:`COST_OPS`). ``get_attr`` nodes (parameters, buffers,
constants) are not nodes of the cost graph (``docs/cost-model.md``); the nodes that read
them list them in ``params``. :class:`NodeInfo` joins what the graph says of a node (its
inputs, module, parameters) with what the recording run measured (:class:`NodeRecord`).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

__all__ = [
    "COST_OPS",
    "NodeInfo",
    "NodeRecord",
    "is_in_place",
    "node_infos",
    "node_module_path",
    "readable_target",
]

COST_OPS = ("placeholder", "call_module", "call_function", "call_method")


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
            ``("value", type name)``; tuples, lists and dicts are kept as such. Read it with
            :func:`lightning_split.graph.metadata.decode`.
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
class NodeRecord:
    """What the recording run measured of one cost node.

    Attributes:
        out_bytes, out_meta, flops: as in :class:`NodeInfo`.
        returns_first_arg: the output is the very object passed as first argument (an in-place op).
        views_first_arg: the output is another tensor over the first argument's memory (a view).
    """

    out_bytes: int
    out_meta: Any
    flops: int
    returns_first_arg: bool = False
    views_first_arg: bool = False


def node_infos(gm: fx.GraphModule, records: Mapping[str, NodeRecord]) -> list[NodeInfo]:
    """The cost nodes of ``gm`` in graph order, each with its record (zeros where there is none)."""
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
                value = get_attr(gm, str(source.target))
                names.append(str(source.target))
                if isinstance(value, torch.Tensor):
                    tensors[id(value)] = value.numel() * value.element_size()
        record = records.get(node.name, NodeRecord(0, None, 0))
        infos.append(
            NodeInfo(
                name=node.name,
                op=node.op,
                target=readable_target(node),
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


def get_attr(gm: fx.GraphModule, target: str) -> Any:
    """The object a get_attr target names in ``gm`` (``None`` if there is none)."""
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


def readable_target(node: fx.Node) -> str:
    """A node's target as text: a path or name as it is, a function by its qualified name."""
    target = node.target
    if isinstance(target, str):
        return target
    try:
        return fx.node._get_qualified_name(target)  # type: ignore[arg-type]
    except Exception:
        module = getattr(target, "__module__", None) or ""
        name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or type(target).__name__
        return f"{module}.{name}" if module else str(name)


def is_in_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` writes its first argument in place, by name or flag.

    ``x.add_()``, ``torch.relu_``, ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``, an
    export's mutable ``aten.silu_``. (fx traces ``x += y`` as ``x + y``.) Mutations through a
    view of the argument are not seen.
    """
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("__")
    if node.op == "call_function":
        if isinstance(node.target, torch._ops.OpOverload):  # ATen ops of an export: ``aten.silu_.default``
            return node.target.overloadpacket.__name__.endswith("_") and node.target._schema.is_mutable
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
