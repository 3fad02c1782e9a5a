"""Modules kept whole inside a ``torch.export`` capture: its counterpart of fx's leaf modules.

``torch.export`` has no leaf modules: it traces through everything, and one submodule with a
data-dependent branch (``nn.TransformerDecoder`` checks ``bool((mask == causal).all())``)
fails the whole capture. Freezing the module that contains it would also freeze every
sibling. Instead, the failing submodule alone is kept whole: while exporting, its
``forward`` calls one opaque custom op (:data:`OPAQUE_OP`), whose fake implementation
returns tensors of the shapes the module really produced on the example (recorded by one
eager run beforehand), and the rebuilt graph calls the module itself there
(a ``call_module`` node, as fx's leaves are). The op itself never runs.

The same mechanism keeps the modules that read their ``training`` flag at run time whole
(``torch.nn`` Dropout and BatchNorm layers), so that an exported graph trains and evaluates
as the module does (the export would otherwise bake the mode it was captured in), and the
modules users name in ``leaf_modules``.

Outputs and arguments of an opaque module must be pytrees (tensors in tuples, lists,
dicts, namedtuples, ``ModelOutput``\\ s); the rest of the Python values are fixed at their
example values.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

__all__ = ["MODE_LEAVES", "OPAQUE_OP", "OpaqueCall", "call_node", "mode_leaf_paths", "opaque_modules", "outermost"]

#: torch.nn modules whose behaviour follows ``module.training`` at run time.
MODE_LEAVES: tuple[type[nn.Module], ...] = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)

_CALLS: dict[int, OpaqueCall] = {}
_IDS = itertools.count()
_LOCK = threading.RLock()  # one export at a time: the records are shared with the op's fake kernel


@dataclass
class OpaqueCall:
    """One call of an opaque module during an export: what goes in, what came out on the example.

    Attributes:
        path: the module's path.
        in_spec: pytree spec of ``(args, kwargs)``.
        in_constants: the non-tensor leaves of the arguments by leaf position.
        out_spec: pytree spec of the output.
        out_paths: key path of each tensor leaf of the output, in order.
        out_constants: the non-tensor leaves of the output by leaf position.
        out_tensors: ``(shape, dtype, device)`` of each tensor leaf of the output.
    """

    path: str
    in_spec: Any = None
    in_constants: dict[int, Any] | None = None
    out_spec: Any = None
    out_paths: tuple[Any, ...] = ()
    out_constants: dict[int, Any] | None = None
    out_tensors: tuple[tuple[torch.Size, torch.dtype, torch.device], ...] = ()

    def arguments(self, tensors: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` with these tensors (nodes, when rebuilding) in the tensor positions."""
        assert self.in_constants is not None
        args, kwargs = pytree.tree_unflatten(_fill(self.in_constants, tensors, self.in_spec.num_leaves), self.in_spec)
        return tuple(args), dict(kwargs)


@torch.library.custom_op("lightning_split::opaque_module", mutates_args=())
def _opaque_module(tensors: list[torch.Tensor], call: int) -> list[torch.Tensor]:
    raise RuntimeError("lightning_split::opaque_module stands for a module kept whole while exporting; it never runs")


@_opaque_module.register_fake
def _opaque_module_fake(tensors: list[torch.Tensor], call: int) -> list[torch.Tensor]:
    record = _CALLS[call]
    return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype, device in record.out_tensors]


OPAQUE_OP = torch.ops.lightning_split.opaque_module.default


def outermost(paths: Iterable[str]) -> list[str]:
    """The paths not inside another of them (a module inside an opaque one never runs on its own)."""
    ordered = sorted(set(paths))
    kept: list[str] = []
    for path in ordered:
        if not any(path.startswith(parent + ".") for parent in kept):
            kept.append(path)
    return kept


def mode_leaf_paths(module: nn.Module) -> list[str]:
    """Paths of the submodules that read their ``training`` flag at run time (:data:`MODE_LEAVES`)."""
    return [path for path, sub in module.named_modules() if path and isinstance(sub, MODE_LEAVES)]


@contextlib.contextmanager
def opaque_modules(module: nn.Module, paths: Sequence[str], run_example: Any) -> Iterator[dict[int, OpaqueCall]]:
    """Keep the modules at ``paths`` whole for an export done inside this context.

    ``run_example()`` runs the module once eagerly on the example (the caller makes it free of
    side effects); it records what each opaque module returns at each of its calls. Yields
    the records by call id, which the rebuild reads (the op's second argument).
    """
    paths = outermost(paths)
    examples: dict[str, list[Any]] = {path: [] for path in paths}
    handles = [
        module.get_submodule(path).register_forward_hook(lambda _m, _a, out, p=path: examples[p].append(out))
        for path in paths
    ]
    try:
        if paths:
            run_example()
    finally:
        for handle in handles:
            handle.remove()
    calls: dict[int, OpaqueCall] = {}
    patched = []
    with _LOCK:
        try:
            for path in paths:
                sub = module.get_submodule(path)
                patched.append((sub, sub.__dict__.get("forward", _MISSING)))
                sub.forward = _standin(path, sub, iter(examples[path]), calls)  # type: ignore[method-assign]
            yield calls
        finally:
            for sub, own in patched:
                if own is _MISSING:
                    sub.__dict__.pop("forward", None)
                else:
                    sub.__dict__["forward"] = own
            for call_id in calls:
                _CALLS.pop(call_id, None)


_MISSING = object()


def _standin(path: str, sub: nn.Module, outputs: Iterator[Any], calls: dict[int, OpaqueCall]) -> Any:
    """The ``forward`` an opaque module has while exporting: one opaque op with the example's output shapes."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        in_leaves, in_spec = pytree.tree_flatten((args, kwargs))
        try:
            example = next(outputs)
        except StopIteration:
            raise RuntimeError(f"{path} is called more often while exporting than on the example") from None
        out_leaves, out_spec = pytree.tree_flatten_with_path(example)
        record = OpaqueCall(
            path=path,
            in_spec=in_spec,
            in_constants={i: v for i, v in enumerate(in_leaves) if not isinstance(v, torch.Tensor)},
            out_spec=out_spec,
            out_paths=tuple(key for key, v in out_leaves if isinstance(v, torch.Tensor)),
            out_constants={i: v for i, (_, v) in enumerate(out_leaves) if not isinstance(v, torch.Tensor)},
            out_tensors=tuple((v.shape, v.dtype, v.device) for _, v in out_leaves if isinstance(v, torch.Tensor)),
        )
        call_id = next(_IDS)
        _CALLS[call_id] = calls[call_id] = record
        produced = OPAQUE_OP([v for v in in_leaves if isinstance(v, torch.Tensor)], call_id)
        return pytree.tree_unflatten(_fill(record.out_constants, produced, len(out_leaves)), out_spec)

    return forward


def _fill(constants: dict[int, Any], tensors: Sequence[Any], count: int) -> list[Any]:
    """``count`` leaves: the constants at their positions, the tensors in order in the others."""
    feed = iter(tensors)
    return [constants[i] if i in constants else next(feed) for i in range(count)]


def call_node(graph: fx.Graph, record: OpaqueCall, tensor_nodes: Sequence[Any], owner: nn.Module) -> fx.Node:
    """The ``call_module`` node that replaces an opaque op in the rebuilt graph."""
    args, kwargs = record.arguments(tensor_nodes)
    node = graph.call_module(record.path, args, kwargs)
    node.meta["nn_module_stack"] = {record.path: (record.path, type(owner.get_submodule(record.path)).__qualname__)}
    return node
