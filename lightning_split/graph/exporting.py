"""Capture a module with ``torch.export`` where torch.fx cannot trace it.

Models written for ``torch.export`` (Hugging Face ``transformers`` 5, most of timm) branch on
shapes, build masks with Python control flow, and construct output dataclasses: fx's
symbolic proxies fail on all three, ``torch.export`` (non-strict, on the example's real
shapes) runs that Python code and records the ATen ops it calls. :func:`export_graph` turns
the exported program into the same kind of ``fx.GraphModule`` the fx path produces, so the
cost graph, the planner and the split programs work on it unchanged:

- one placeholder per tensor-carrying ``forward`` argument (as on the fx path; a batch that
  is a tuple or dict is unpacked by ``getitem`` nodes), the non-tensor arguments fixed at
  their example values;
- parameters and buffers as ``get_attr`` nodes named by their state_dict keys, bound to the
  module's own tensors (no weights are copied); tensor constants the export created as
  ``get_attr`` nodes under :data:`CONSTANTS`, which are part of the program on both sides
  and never state;
- every node keeps ``meta["nn_module_stack"]``, whose innermost entry is the module the op
  was called in, so module paths (``cut="model.transformer.h.0"``) name its nodes;
- the graph returns the tensor leaves of what ``forward`` returned, in the order of
  :func:`~lightning_split.graph.structure.flatten_output`; the returned object is rebuilt
  from them (:class:`~lightning_split.graph.structure.ReturnedValue`);
- runtime assertions of the export (``_assert_tensor_metadata`` and kin) are dropped: they
  check dtypes the program specialised on and would refuse autocast.

The export is deterministic in the module's code, its configuration and the example's
shapes and dtypes (never its values: export runs on fake tensors), so the server, which
captures its own copy of the model on zero tensors of the device's shapes, gets the same
graph and fingerprint. Shapes are static: a batch of another size needs a new capture,
which the split reports (the server checks every cut value's shape).

If the export fails, :class:`ExportFailure` says in which submodule (the innermost one
whose ``forward`` was running) and why.
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import io
import logging
import operator
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from lightning_split.graph.errors import one_line
from lightning_split.graph.opaque import OPAQUE_OP, OpaqueCall, call_node, mode_leaf_paths, opaque_modules, outermost
from lightning_split.graph.recording import PreservedState
from lightning_split.graph.structure import OutputStructure, flatten_output

__all__ = ["CONSTANTS", "ExportFailure", "ExportedGraph", "export_graph", "export_module"]

CONSTANTS = "_lightning_split_constants"  # attribute holding the export's tensor constants
_DROPPED_OPS = ("_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range")


class ExportFailure(RuntimeError):
    """``torch.export`` could not capture the module.

    Attributes:
        path: the innermost submodule whose ``forward`` was running when it failed (``""``
            for the root's own code).
        cause: the exception the export raised.
    """

    def __init__(self, path: str, cause: BaseException) -> None:
        where = f"in submodule {path!r}" if path else "in the root's forward"
        super().__init__(f"torch.export failed {where}: {one_line(cause)}")
        self.path = path
        self.cause = cause


@dataclass
class ExportedGraph:
    """The result of :func:`export_graph`: the graph, the structure its outputs fill, the modules kept whole.

    Attributes:
        graph_module: the rebuilt graph (see the module docstring).
        structure: what ``forward`` returned, its leaves in the order of
            :func:`~lightning_split.graph.structure.flatten_output`.
        constant_leaves: position in ``structure`` -> a non-tensor leaf (fixed at its example value);
            the graph's outputs fill the other positions in order.
        opaque: paths of the modules kept whole (one ``call_module`` node per call).
        auto_opaque: path -> reason, for the modules kept whole because the export failed in them.
    """

    graph_module: fx.GraphModule
    structure: OutputStructure
    constant_leaves: dict[int, Any]
    opaque: tuple[str, ...] = ()
    auto_opaque: dict[str, str] = field(default_factory=dict)


def export_module(
    module: nn.Module,
    call: inspect.BoundArguments,
    slots: Sequence[tuple[str, Any]],
    rebind: Callable[[Sequence[Any]], inspect.BoundArguments],
    class_name: str,
    opaque: Sequence[str] = (),
) -> ExportedGraph:
    """Export, keeping ``opaque`` modules whole, and every submodule the export fails in, innermost first.

    Each failure inside a submodule keeps that submodule whole and exports again, so a
    data-dependent branch freezes only the module it is in, never its parent and siblings.
    ``torch.nn`` modules whose behaviour depends on ``training`` are always kept whole
    (:data:`~lightning_split.graph.opaque.MODE_LEAVES`).

    Raises:
        ExportFailure: the export fails in the root's own code, or in a module already kept whole.
    """
    kept = list(dict.fromkeys([*opaque, *mode_leaf_paths(module)]))
    auto: dict[str, str] = {}
    for _ in range(len(list(module.modules())) + 1):
        try:
            exported = export_graph(module, call, slots, rebind, class_name, [*kept, *auto])
        except ExportFailure as failure:
            inside = [p for p in [*kept, *auto] if failure.path == p or failure.path.startswith(p + ".")]
            if not failure.path or inside:
                raise
            auto[failure.path] = one_line(failure.cause)
            continue
        exported.auto_opaque = auto
        return exported
    raise ExportFailure("", RuntimeError(f"gave up after keeping {list(auto)} whole"))  # pragma: no cover


def export_graph(
    module: nn.Module,
    call: inspect.BoundArguments,
    slots: Sequence[tuple[str, Any]],
    rebind: Callable[[Sequence[Any]], inspect.BoundArguments],
    class_name: str,
    opaque: Sequence[str] = (),
) -> ExportedGraph:
    """Export ``module.forward`` called as ``call`` once and rebuild it as a split-ready GraphModule.

    Args:
        module: the model; its state is unchanged afterwards (buffers, modes, RNG).
        call: the example call, bound to ``forward``'s signature.
        slots: ``(placeholder name, slot)`` for each tensor-carrying argument, in order.
        rebind: makes the bound call with the given slot values in place of the example's.
        class_name: the GraphModule's class name.
        opaque: paths of the modules to keep whole.

    Raises:
        ExportFailure: the export raised (the message names the submodule).
    """
    values = [pytree.tree_map(_fresh_tensor, _slot_value(call, slot)) for _, slot in slots]
    captured: dict[str, Any] = {}

    def forward(*slot_values: Any) -> tuple[torch.Tensor, ...]:
        bound = rebind(slot_values)
        leaves, captured["structure"] = flatten_output(type(module).forward(module, *bound.args, **bound.kwargs))
        captured["constants"] = {i: leaf for i, leaf in enumerate(leaves) if not isinstance(leaf, torch.Tensor)}
        return tuple(leaf for leaf in leaves if isinstance(leaf, torch.Tensor))

    def run_example() -> None:
        bound = rebind(values)
        with PreservedState(module), torch.random.fork_rng(devices=[]), torch.no_grad():
            type(module).forward(module, *bound.args, **bound.kwargs)

    stack: list[str] = []
    hooks = _track_module_stack(module, stack)
    own_forward = module.__dict__.get("forward", _MISSING)
    try:
        with opaque_modules(module, opaque, run_example) as calls:
            module.forward = forward  # type: ignore[method-assign]
            with PreservedState(module), _tensor_attributes_kept(module), torch.random.fork_rng(devices=[]):
                program = _quiet_export(module, tuple(values))
    except Exception as exc:
        raise ExportFailure(stack[-1] if stack else "", exc) from exc
    finally:
        _restore_forward(module, own_forward)
        for hook in hooks:
            hook.remove()
    gm = _rebuild(module, program, slots, values, class_name, calls)
    return ExportedGraph(gm, captured["structure"], captured["constants"], tuple(outermost(opaque)))


_MISSING = object()


def _quiet_export(module: nn.Module, values: tuple[Any, ...]) -> torch.export.ExportedProgram:
    """``torch.export.export``, without the partial graph it prints to stderr when it fails (the retry reports it)."""
    captured = io.StringIO()
    shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")  # warns about each failed guard
    level = shapes_log.level
    shapes_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(captured):
            return torch.export.export(module, values, strict=False)
    except Exception as exc:
        partial = str(getattr(exc, "partial_fx_graph", "") or "")
        text = captured.getvalue()
        captured = io.StringIO(text.replace(partial, "") if partial else text)
        raise
    finally:
        shapes_log.setLevel(level)
        if captured.getvalue().strip():
            sys.stderr.write(captured.getvalue())


@contextlib.contextmanager
def _tensor_attributes_kept(module: nn.Module) -> Iterator[None]:
    """Undo tensors the traced code assigns to plain module attributes (``self.mask = ...``): they are fake."""
    saved = [(sub, dict(sub.__dict__)) for sub in module.modules()]
    try:
        yield
    finally:
        for sub, before in saved:
            for key, value in list(sub.__dict__.items()):
                if key in before and value is not before[key] and (before[key] is None or _is_tensor(before[key])):
                    sub.__dict__[key] = before[key]
                elif key not in before and _is_tensor(value):
                    del sub.__dict__[key]


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _restore_forward(module: nn.Module, own_forward: Any) -> None:
    if own_forward is _MISSING:
        module.__dict__.pop("forward", None)
    else:
        module.__dict__["forward"] = own_forward


def _fresh_tensor(value: Any) -> Any:
    """A copy of each example tensor: export merges arguments that are one tensor object, the server's are not."""
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _slot_value(call: inspect.BoundArguments, slot: Any) -> Any:
    if isinstance(slot, tuple):
        name, key = slot
        return call.arguments[name][key]
    return call.arguments[slot]


def _track_module_stack(module: nn.Module, stack: list[str]) -> list[Any]:
    """Hooks that keep ``stack`` at the paths of the submodules whose forward is running.

    A raising forward never pops, so after a failure the innermost running module is on top.
    """

    def enter(path: str) -> None:
        stack.append(path)

    def leave(path: str) -> None:  # a hook returning a value would replace the module's output
        if stack and stack[-1] == path:
            stack.pop()

    hooks = []
    for path, sub in module.named_modules():
        if path:
            hooks.append(sub.register_forward_pre_hook(lambda *_, p=path: enter(p)))
            hooks.append(sub.register_forward_hook(lambda *_, p=path: leave(p)))
    return hooks


# ---------------------------------------------------------------------------------------------
# From the exported program to the GraphModule


class _Rebuilder:
    """Copies the exported (lifted) graph into a new one with placeholders, get_attr and outputs as described."""

    def __init__(self, module: nn.Module, program: torch.export.ExportedProgram, calls: dict[int, OpaqueCall]) -> None:
        self.module = module
        self.program = program
        self.calls = calls
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.attributes: dict[str, Any] = {}

    def user_inputs(self, slots: Sequence[tuple[str, Any]], values: Sequence[Any]) -> list[Any]:
        """A placeholder per slot and the nodes (or constants) standing for each flattened leaf."""
        leaves: list[Any] = []
        for (label, _), value in zip(slots, values):
            placeholder = self.graph.placeholder(label)
            for path, leaf in pytree.tree_flatten_with_path(value)[0]:
                leaves.append(_extract(self.graph, placeholder, path) if isinstance(leaf, torch.Tensor) else leaf)
        return leaves

    def state(self, target: str, kind: str) -> fx.Node:
        """A get_attr node for a parameter, buffer or constant of the export (named after its target)."""
        if kind == "CONSTANT_TENSOR":
            attribute = f"{CONSTANTS}.{target.replace('.', '_')}"
            self.attributes[attribute] = self.program.constants[target]
        else:
            attribute = target
            owner = self.module.get_parameter if kind == "PARAMETER" else self.module.get_buffer
            self.attributes[attribute] = owner(target)
        return self.graph.get_attr(attribute)

    def copy_body(self) -> None:
        for node in self.program.graph.nodes:
            if node.op == "call_function":
                if _dropped(node):
                    continue
                if self._opaque(node):
                    continue
                copied = self.graph.node_copy(node, self._lookup)
                copied.meta = {key: node.meta[key] for key in ("nn_module_stack",) if key in node.meta}
                self.env[node] = copied
            elif node.op == "get_attr":  # submodules of higher-order ops (e.g. autocast regions)
                target = str(node.target)
                self.attributes[target] = operator.attrgetter(target)(self.program.graph_module)
                self.env[node] = self.graph.node_copy(node)

    def _opaque(self, node: fx.Node) -> bool:
        """Replace an opaque op by its module's call, and the op's ``getitem`` users by reads of the output."""
        if node.target is OPAQUE_OP:
            record = self.calls[node.args[1]]
            module_call = call_node(self.graph, record, [self.env[n] for n in node.args[0]], self.module)
            self.attributes[record.path] = self.module.get_submodule(record.path)
            self.env[node] = (module_call, record)
            return True
        source = node.args[0] if node.target is operator.getitem and node.args else None
        if isinstance(source, fx.Node) and source.target is OPAQUE_OP:
            module_call, record = self.env[source]
            self.env[node] = _extract(self.graph, module_call, record.out_paths[node.args[1]])
            return True
        return False

    def _lookup(self, node: fx.Node) -> Any:
        return self.env[node]


def _rebuild(
    module: nn.Module,
    program: torch.export.ExportedProgram,
    slots: Sequence[tuple[str, Any]],
    values: Sequence[Any],
    class_name: str,
    calls: dict[int, OpaqueCall],
) -> fx.GraphModule:
    rebuilder = _Rebuilder(module, program, calls)
    user_leaves = iter(rebuilder.user_inputs(slots, values))
    placeholders = [node for node in program.graph.nodes if node.op == "placeholder"]
    for spec, node in zip(program.graph_signature.input_specs, placeholders):
        kind = spec.kind.name
        if kind == "USER_INPUT":
            rebuilder.env[node] = next(user_leaves)
        elif kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            rebuilder.env[node] = rebuilder.state(str(spec.target), kind)
        else:
            raise RuntimeError(f"torch.export produced a {kind} input ({node.name}), which a split cannot carry")
    rebuilder.copy_body()
    outputs = _outputs(rebuilder, program)
    rebuilder.graph.output(tuple(outputs))
    rebuilder.graph.lint()
    return fx.GraphModule(rebuilder.attributes, rebuilder.graph, class_name=class_name)


def _outputs(rebuilder: _Rebuilder, program: torch.export.ExportedProgram) -> list[Any]:
    """The user outputs; a mutation of a buffer or an input becomes an explicit ``copy_`` into it."""
    (returned,) = next(node for node in reversed(program.graph.nodes) if node.op == "output").args
    graph, env = rebuilder.graph, rebuilder.env
    outputs = []
    for spec, value in zip(program.graph_signature.output_specs, returned):
        kind = spec.kind.name
        new_value = env[value] if isinstance(value, fx.Node) else value
        if kind in ("USER_OUTPUT", "LOSS_OUTPUT"):
            outputs.append(new_value)
        elif kind in ("BUFFER_MUTATION", "USER_INPUT_MUTATION"):
            if kind == "BUFFER_MUTATION":
                target = rebuilder.state(str(spec.target), "BUFFER")
            else:
                target = env[_placeholder(program, spec.target)]
            copy = graph.call_function(torch.ops.aten.copy_.default, (target, new_value))
            owner = str(spec.target).rpartition(".")[0] if kind == "BUFFER_MUTATION" else ""
            if owner:
                copy.meta["nn_module_stack"] = {owner: (owner, type(rebuilder.module.get_submodule(owner)).__name__)}
        else:
            raise RuntimeError(f"torch.export produced a {kind} output, which a split cannot carry")
    return outputs


def _placeholder(program: torch.export.ExportedProgram, name: str) -> fx.Node:
    return next(node for node in program.graph.nodes if node.op == "placeholder" and node.name == name)


def _extract(graph: fx.Graph, value: fx.Node, path: Sequence[Any]) -> fx.Node:
    """Nodes that take one leaf out of a structured argument (``batch[0]["x"]``)."""
    for key in path:
        if isinstance(key, pytree.GetAttrKey):
            value = graph.call_function(builtins.getattr, (value, key.name))
        else:
            value = graph.call_function(operator.getitem, (value, key.idx if hasattr(key, "idx") else key.key))
    return value


def _dropped(node: fx.Node) -> bool:
    name = getattr(node.target, "__name__", "")
    return not node.users and any(name.startswith(op) for op in _DROPPED_OPS)
