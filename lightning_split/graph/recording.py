"""The recording run: the traced graph run once on the example inputs, measuring every cost node.

Per cost node it keeps what the node outputs (:func:`~lightning_split.graph.metadata.describe`:
shapes, dtypes, bytes) and its forward FLOPs (``torch.utils.flop_counter``). The run has no
side effects on the model: no autograd, buffers (BatchNorm running statistics) and
train/eval flags restored (:class:`PreservedState`), the CPU RNG forked, example tensors
cloned (in-place ops on an input must not change the caller's batch). Its records also
show which in-place ops return their input, which :func:`thread_in_place_ops` turns into
explicit edges of the graph.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from lightning_split.graph.errors import TraceError, one_line
from lightning_split.graph.metadata import describe
from lightning_split.graph.nodes import COST_OPS, NodeRecord, is_in_place

__all__ = ["InPlaceViewWarning", "PreservedState", "record", "thread_in_place_ops"]


class _Recorder(fx.Interpreter):
    """Runs the graph and keeps, per cost node, the output's size and structure and its FLOPs."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.records: dict[str, NodeRecord] = {}
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
                f"the traced graph fails at node {n.name!r}{where} on the example inputs: {one_line(exc)}"
            ) from exc
        meta, size = describe(result)
        flops = int(self.counter.get_total_flops() - before)
        first = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        source = self.env.get(first) if first is not None else None
        same = isinstance(result, torch.Tensor) and source is result
        self.records[n.name] = NodeRecord(size, meta, flops, same, not same and _shares_memory(result, source))
        return result


def _shares_memory(result: Any, source: Any) -> bool:
    if not (isinstance(result, torch.Tensor) and isinstance(source, torch.Tensor)) or source.numel() == 0:
        return False
    try:
        return result.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse and other layouts without one storage
        return False


def record(module: nn.Module, gm: fx.GraphModule, inputs: list[Any]) -> dict[str, NodeRecord]:
    """Run ``gm`` once on (clones of) ``inputs`` without side effects on ``module``; the records by node name."""
    recorder = _Recorder(gm)
    inputs = pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, inputs)
    with PreservedState(module, gm), torch.no_grad(), torch.random.fork_rng(devices=[]), recorder.counter:
        recorder.run(*inputs)
    return recorder.records


def thread_in_place_ops(gm: fx.GraphModule, records: dict[str, NodeRecord]) -> bool:
    """Make in-place mutations explicit data flow: later readers of a mutated value read the in-place node.

    ``relu.add_(1)`` has no users of its own in fx (later code keeps using ``relu``), so a
    cost graph would see no edge from it and could place it after, or apart from, the nodes
    that read the mutated tensor. The in-place node returns the same tensor object (checked
    in the recording run), so redirecting every later use of the mutated value to it keeps
    the computation and adds the missing edges. Mutations through a view (``x.view(...).add_``)
    are not tracked; :class:`InPlaceViewWarning` names them where something else reads the
    value. Returns whether the graph changed.
    """
    order = {node: index for index, node in enumerate(gm.graph.nodes)}
    changed = False
    for node in list(gm.graph.nodes):
        entry = records.get(node.name)
        if entry is None or not entry.returns_first_arg or not is_in_place(gm, node):
            continue
        mutated = node.args[0]
        _warn_if_through_a_view(node, mutated, records)
        for user in list(mutated.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(mutated, node)
                changed = True
    return changed


def _warn_if_through_a_view(node: fx.Node, mutated: fx.Node, records: dict[str, NodeRecord]) -> None:
    """Warn when ``node`` writes a view of a value that something else reads: that write is not data flow.

    A chain of views that nothing else reads (``fc(x).view(...)`` then ``relu_``) is harmless: the
    readers of the written view are threaded like any in-place write.
    """
    view, base = mutated, None
    while (entry := records.get(view.name)) is not None and entry.views_first_arg:
        source = view.args[0]
        assert isinstance(source, fx.Node)  # a view of the first argument
        if len(source.users) > 1:
            base = source
            break
        view = source
    if base is None:
        return
    warnings.warn(
        f"node {node.name!r} writes {mutated.name!r}, a view of {base.name!r}, in place: lightning-split does not "
        f"follow writes through views, so a cut between {base.name!r}, its readers and {node.name!r} can make "
        "split training differ from local training. Write it out of place (e.g. torch.where or index_put on a "
        f"copy), or pin {base.name!r}, {node.name!r} and the readers of {base.name!r} to one side",
        InPlaceViewWarning,
        stacklevel=2,
    )


class InPlaceViewWarning(UserWarning):
    """A model writes a view of a value in place: the cost graph cannot see which readers see the write."""


class PreservedState:
    """Snapshot buffers (by owner and name) and train/eval flags of modules; put them back on exit.

    Used around any run of a user's model that must leave no trace (the recording run here,
    node timing in :mod:`lightning_split.costs`).
    """

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
