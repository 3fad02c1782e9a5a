"""Device and server programs: the traced graph cut in two.

Given a traced ``GraphModule`` and the set of nodes that run on the device, this module
builds the two halves as fx ``GraphModule`` objects:

- the *device program* takes the model's inputs and returns the *cut values* (outputs of
  device nodes consumed by server nodes) followed by the device-side values the model
  returns;
- the *server program* takes the cut values and returns the server-side values the model
  returns.

:func:`assemble_output` puts the model's return value back together from both, in the
structure the original ``forward`` returns. Parameters and buffers stay where they are
used: each program references only the submodules and attributes its own nodes need, by
reference (no weights are copied). Both sides build their half from their own trace with
the same :class:`SplitSpec`, so the server never receives code.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from lightning_split.graph.exporting import CONSTANTS
from lightning_split.graph.nodes import COST_OPS, is_in_place, node_module_path
from lightning_split.graph.readers import with_metadata_nodes
from lightning_split.graph.structure import RETURNED


class SplitError(ValueError):
    """A placement cannot be turned into programs (names the node and the fix)."""


@dataclass(frozen=True)
class SplitSpec:
    """Which nodes run where and which values cross; identical on both sides.

    Attributes:
        server_nodes: names of the nodes the server runs, in graph order.
        cut: names of the device values the server consumes, in graph order.
        server_outputs: names of the server values the model returns, in graph order.
    """

    server_nodes: tuple[str, ...]
    cut: tuple[str, ...]
    server_outputs: tuple[str, ...]

    def to_json(self) -> dict[str, list[str]]:
        return {
            "server_nodes": list(self.server_nodes),
            "cut": list(self.cut),
            "server_outputs": list(self.server_outputs),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SplitSpec:
        try:
            return cls(*(tuple(str(name) for name in data[key]) for key in ("server_nodes", "cut", "server_outputs")))
        except (KeyError, TypeError) as exc:
            raise SplitError(f"malformed split spec: {exc!r}") from exc


def graph_summary(gm: fx.GraphModule) -> list[list[str]]:
    """``[name, op, target]`` per node: enough to say where two traces of a model differ."""
    return [[node.name, node.op, str(node.target)] for node in gm.graph.nodes]


def example_skeleton(value: Any) -> Any:
    """Replace every tensor in a nested value by ``{"$tensor": [dtype, shape]}`` (JSON, no data)."""
    if isinstance(value, torch.Tensor):
        return {"$tensor": [str(value.dtype).removeprefix("torch."), list(value.shape)]}
    if isinstance(value, dict):
        return {str(k): example_skeleton(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(example_skeleton(v) for v in value)
    return value


def materialize_skeleton(value: Any, max_elements: int = 2**28) -> Any:
    """Zero tensors for the descriptors of :func:`example_skeleton` (sizes checked first)."""
    if isinstance(value, dict) and set(value) == {"$tensor"}:
        try:
            dtype_name, shape = value["$tensor"]
            dtype = getattr(torch, str(dtype_name))
            shape = [int(d) for d in shape]
        except (TypeError, ValueError, AttributeError) as exc:
            raise SplitError(f"malformed example tensor descriptor {value!r}") from exc
        if not isinstance(dtype, torch.dtype) or any(d < 0 for d in shape) or math.prod(shape) > max_elements:
            raise SplitError(f"refused example tensor descriptor {value!r}")
        return torch.zeros(shape, dtype=dtype)
    if isinstance(value, dict):
        return {k: materialize_skeleton(v, max_elements) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(materialize_skeleton(v, max_elements) for v in value)
    return value


def cost_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes the planner places: placeholders and calls (not get_attr, not output)."""
    return [node for node in gm.graph.nodes if node.op in COST_OPS]


def output_node(gm: fx.GraphModule) -> fx.Node:
    for node in reversed(gm.graph.nodes):
        if node.op == "output":
            return node
    raise SplitError("the traced graph has no output node")


def returned_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """Cost nodes the model returns, in graph order, each once."""
    found: dict[fx.Node, None] = {}
    fx.node.map_arg(output_node(gm).args, lambda n: found.setdefault(n, None) if n.op in COST_OPS else None)
    order = {node: index for index, node in enumerate(gm.graph.nodes)}
    return sorted(found, key=order.__getitem__)


def _cost_inputs(node: fx.Node) -> list[fx.Node]:
    """Cost nodes whose values ``node`` consumes, looking through get_attr."""
    return [n for n in node.all_input_nodes if n.op in COST_OPS]


def make_spec(gm: fx.GraphModule, server_nodes: Iterable[str]) -> SplitSpec:
    """Check a placement against the graph and derive the values that cross.

    Raises:
        SplitError: a name is unknown, a placeholder is placed on the server, or a device
            node consumes a server value (data would flow back to the device in forward).
    """
    nodes = {node.name: node for node in cost_nodes(gm)}
    server = set(server_nodes)
    unknown = sorted(server - set(nodes))
    if unknown:
        raise SplitError(f"unknown node name(s) in the placement: {', '.join(unknown)}")
    cut: dict[str, None] = {}
    for node in nodes.values():
        inputs = _cost_inputs(node)
        if node.name in server:
            if node.op == "placeholder":
                raise SplitError(f"model input {node.name!r} must stay on the device")
            for source in inputs:
                if source.name not in server:
                    cut[source.name] = None
        else:
            backward = [source.name for source in inputs if source.name in server]
            if backward:
                raise SplitError(
                    f"device node {node.name!r} consumes server value(s) {backward}: data may only flow "
                    "device -> server; put its inputs on the device or the node on the server"
                )
    order = [node.name for node in nodes.values()]
    position = {name: index for index, name in enumerate(order)}
    return SplitSpec(
        server_nodes=tuple(sorted(server, key=position.__getitem__)),
        cut=tuple(sorted(cut, key=position.__getitem__)),
        server_outputs=tuple(node.name for node in returned_nodes(gm) if node.name in server),
    )


def device_spec_from_cut(gm: fx.GraphModule, cut_names: Iterable[str]) -> SplitSpec:
    """Placement from user-named cut points: those nodes and all their ancestors on the device.

    Each name is an fx node name or a module path (``"layer2"`` selects every node of
    ``layer2`` and its submodules, i.e. the device runs up to the end of ``layer2``).
    """
    nodes = cost_nodes(gm)
    selected: list[fx.Node] = []
    for name in cut_names:
        matches = [n for n in nodes if n.name == name]
        if not matches:
            matches = _module_matches(nodes, name)
        if not matches:
            known = sorted({path for n in nodes if (path := node_module_path(n))})
            raise SplitError(
                f"cut point {name!r} is neither a node nor a module path of the traced model (a module that runs "
                f"whole has no inner paths); module paths include: {', '.join(known[:12])}"
                f"{' ...' if len(known) > 12 else ''}"
            )
        selected.extend(matches)
    device: set[str] = {n.name for n in nodes if n.op == "placeholder"}
    stack = list(selected)
    while stack:
        node = stack.pop()
        if node.name in device and node.op != "placeholder":
            continue
        device.add(node.name)
        stack.extend(n for n in _cost_inputs(node) if n.name not in device)
    device = with_metadata_nodes(gm, device)  # shapes are read where the tensor is, and sent as values
    return make_spec(gm, [n.name for n in nodes if n.name not in device])


def _module_matches(nodes: list[fx.Node], name: str) -> list[fx.Node]:
    """Nodes of module ``name`` and its submodules.

    ``name`` may also be the end of a unique path (``layer1`` for ``model.layer1``).
    """
    paths = {path for node in nodes if (path := node_module_path(node))}
    roots = [name] if any(p == name or p.startswith(name + ".") for p in paths) else []
    if not roots:
        roots = sorted({p[: p.index("." + name) + len(name) + 1] for p in paths if ("." + name + ".") in p + "."})
        if len(roots) > 1:
            raise SplitError(f"cut point {name!r} is ambiguous: it names {', '.join(roots)}; use the full path")
    if not roots:
        return []
    root = roots[0]
    return [n for n in nodes if (p := node_module_path(n)) and (p == root or p.startswith(root + "."))]


def _copy_nodes(gm: fx.GraphModule, graph: fx.Graph, names: set[str], env: dict[fx.Node, fx.Node]) -> None:
    """Copy the named cost nodes (and the get_attr nodes they read) into ``graph``."""
    for node in gm.graph.nodes:
        if node.name not in names or node.op == "placeholder":
            continue
        for source in node.all_input_nodes:
            if source.op == "get_attr" and source not in env:
                env[source] = graph.node_copy(source)
        env[node] = graph.node_copy(node, env.__getitem__)


def _finish(gm: fx.GraphModule, graph: fx.Graph, name: str) -> fx.GraphModule:
    graph.lint()
    return fx.GraphModule(gm, graph, class_name=name)


def device_program(gm: fx.GraphModule, spec: SplitSpec) -> fx.GraphModule:
    """The prefix: model inputs -> (cut values..., device-side returned values...)."""
    server = set(spec.server_nodes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = graph.node_copy(node)
    device = {n.name for n in cost_nodes(gm) if n.name not in server}
    _copy_nodes(gm, graph, device, env)
    by_name = {node.name: node for node in gm.graph.nodes}
    returned = [by_name[name] for name in device_outputs(gm, spec)]
    cut = [_snapshot_if_mutated(gm, graph, by_name[name], env, device) for name in spec.cut]
    graph.output(tuple(cut) + tuple(env[node] for node in returned))
    return _finish(gm, graph, "DeviceProgram")


def snapshot(value: Any) -> Any:
    """A copy of a tensor (autograd flows through it), other values as they are."""
    return value.clone() if isinstance(value, torch.Tensor) else value


def _snapshot_if_mutated(
    gm: fx.GraphModule, graph: fx.Graph, node: fx.Node, env: dict[fx.Node, fx.Node], device: set[str]
) -> fx.Node:
    """The value of cut ``node`` to send: a copy taken right after it when a later device node writes it in place.

    Server nodes read the value as it was when computed (``h * 2`` before ``h.add_(1)``), but
    the device program returns its cut values when it ends, after every device node ran: an
    in-place write on the device would reach the server otherwise.
    """
    copied = env[node]
    if not any(user.name in device and is_in_place(gm, user) and user.args[0] is node for user in node.users):
        return copied
    with graph.inserting_after(copied):
        return graph.call_function(snapshot, (copied,))


def device_outputs(gm: fx.GraphModule, spec: SplitSpec) -> tuple[str, ...]:
    """Names of the device-side values the model returns, in graph order."""
    server = set(spec.server_nodes)
    return tuple(node.name for node in returned_nodes(gm) if node.name not in server)


def server_program(gm: fx.GraphModule, spec: SplitSpec) -> fx.GraphModule:
    """The suffix: (cut values...) -> (server-side returned values...)."""
    graph = fx.Graph()
    by_name = {node.name: node for node in gm.graph.nodes}
    env: dict[fx.Node, fx.Node] = {}
    for name in spec.cut:
        placeholder = graph.placeholder(name)
        placeholder.meta = dict(by_name[name].meta)
        env[by_name[name]] = placeholder
    _copy_nodes(gm, graph, set(spec.server_nodes), env)
    graph.output(tuple(env[by_name[name]] for name in spec.server_outputs))
    return _finish(gm, graph, "ServerProgram")


def assemble_output(gm: fx.GraphModule, values: Mapping[str, Any]) -> Any:
    """Rebuild the model's return value from named node values (device and server).

    A captured graph (:func:`~lightning_split.graph.capture.trace_module`) knows the type and
    structure ``forward`` returned, which is rebuilt exactly (a ``ModelOutput`` stays one);
    any other graph returns its output node's structure.
    """
    returned = gm.meta.get(RETURNED)
    if returned is not None:
        return returned.rebuild(values, gm)

    def lookup(node: fx.Node) -> Any:
        if node.op == "get_attr":
            return operator.attrgetter(str(node.target))(gm)
        return values[node.name]

    (result,) = output_node(gm).args
    return fx.node.map_aggregate(result, lambda a: lookup(a) if isinstance(a, fx.Node) else a)


def used_state(gm: fx.GraphModule, node_names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Parameters and buffers the named nodes use, by state_dict-style key.

    A parameter tied under several names is listed under each name that is reachable
    from these nodes' modules and attributes. The tensor constants of an export (under
    :data:`~lightning_split.graph.exporting.CONSTANTS`) are part of the program on both sides,
    not state.
    """
    names = set(node_names)
    used: dict[str, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.name not in names:
            continue
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            used.update(_module_state(module, str(node.target)))
        for source in node.all_input_nodes:
            if source.op == "get_attr" and not str(source.target).startswith(CONSTANTS + "."):
                value = operator.attrgetter(str(source.target))(gm)
                if isinstance(value, torch.Tensor):
                    used[str(source.target)] = value
                elif isinstance(value, nn.Module):
                    used.update(_module_state(value, str(source.target)))
    return used


def _module_state(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters(prefix=prefix, remove_duplicate=False):
        state[name] = param
    for name, buffer in module.named_buffers(prefix=prefix, remove_duplicate=False):
        state[name] = buffer
    return state


def shared_across(gm: fx.GraphModule, spec: SplitSpec) -> dict[str, tuple[list[str], list[str]]]:
    """Tensors (tied parameters, shared buffers) that nodes on both sides use.

    Returns a map from a state key to (device users, server users); empty when the
    placement keeps every tensor on one side, as it must before training starts.
    """
    server = set(spec.server_nodes)
    owners: dict[int, dict[str, list[str]]] = {}
    keys: dict[int, str] = {}
    for node in cost_nodes(gm):
        for key, tensor in used_state(gm, [node.name]).items():
            side = "server" if node.name in server else "device"
            owners.setdefault(id(tensor), {"device": [], "server": []})[side].append(node.name)
            keys.setdefault(id(tensor), key)
    return {
        keys[ident]: (users["device"], users["server"])
        for ident, users in owners.items()
        if users["device"] and users["server"]
    }
