"""Which submodules are traced as opaque leaves, and the tracer that finds the untraceable ones.

A submodule becomes one ``call_module`` node when the user names it (by path or class) in
``leaf_modules``, when it is a ``torch.nn`` leaf, or automatically: a submodule whose
``forward`` fx cannot trace (control flow on tensor values, calls fx does not support) is
retried as a leaf, innermost failing submodule first, until the trace succeeds
(:func:`trace_with_auto_leaves`). The leaves made automatically and why are reported in a
warning. Only an untraceable root ``forward`` is an error.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from torch import fx, nn

from lightning_split.graph.arguments import assign
from lightning_split.graph.errors import TraceError, one_line
from lightning_split.graph.structure import OutputStructure, flatten_output

__all__ = ["SplitTracer", "leaf_paths_of", "split_leaf_spec", "trace_with_auto_leaves", "warn_auto_leaves"]


class SplitTracer(fx.Tracer):
    """fx tracer with user/auto leaves, fixed non-tensor arguments and failure localisation.

    ``failure`` is ``(path, class, exception)`` of the innermost submodule whose traced
    ``forward`` raised; :func:`trace_with_auto_leaves` turns it into a leaf.
    """

    def __init__(
        self,
        leaf_paths: set[str],
        leaf_types: tuple[type, ...],
        bound: inspect.BoundArguments,
        slots: list[tuple[str, Any]],
    ) -> None:
        super().__init__()
        # buffers read as attributes become get_attr proxies, so that an update in traced code
        # (timm's ``self.num_batches_tracked.add_(1)``) is a node, not a side effect of tracing
        self.proxy_buffer_attributes = True
        self.leaf_paths = leaf_paths
        self.leaf_types = leaf_types
        self.bound = bound
        self.slots = slots
        self.failure: tuple[str, type, BaseException] | None = None
        self.structure: OutputStructure | None = None

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
            assign(arguments, self.bound.signature, slot, proxies[name])
        call = inspect.BoundArguments(self.bound.signature, arguments)  # type: ignore[arg-type]
        root = self.root

        def traced_forward():  # unannotated: fx would copy a return annotation into the generated code
            result = root_fn(root, *call.args, **call.kwargs)
            leaves, self.structure = flatten_output(result)
            # fx keeps tuples, lists, dicts and namedtuples; anything else (a dataclass, a ModelOutput)
            # is returned as its leaves and rebuilt from the recorded structure
            return result if self.structure.is_plain() else tuple(leaves)

        return traced_forward, []


def trace_with_auto_leaves(
    module: nn.Module,
    leaf_paths: set[str],
    leaf_types: tuple[type, ...],
    bound: inspect.BoundArguments,
    slots: list[tuple[str, Any]],
) -> tuple[SplitTracer, fx.Graph, dict[str, str]]:
    """Trace ``module``, making each untraceable submodule a leaf until the trace succeeds.

    Returns the tracer that succeeded, its graph, and path -> reason for the automatic
    leaves (:func:`warn_auto_leaves` tells the user about them, when this trace is the one used).

    Raises:
        TraceError: the root ``forward`` is not traceable, or a submodule fails even as a leaf.
    """
    cls_name = type(module).__qualname__
    auto_leaves: dict[str, str] = {}
    for _ in range(len(list(module.modules())) + 1):
        tracer = SplitTracer(leaf_paths | set(auto_leaves), leaf_types, bound, slots)
        try:
            graph = tracer.trace(module)
            break
        except Exception as exc:
            failure = tracer.failure if tracer.failure is not None and _caused_by(exc, tracer.failure[2]) else None
            if failure is None:
                raise TraceError(
                    f"cannot trace the forward of the root module ({cls_name}): {one_line(exc)}. "
                    f"Make {cls_name}.forward fx-traceable (no Python control flow on tensor values, no "
                    "unsupported calls), or move the untraceable part into a submodule, which is then "
                    "traced as an opaque leaf automatically or via leaf_modules=[...]"
                ) from exc
            path, sub_cls, sub_exc = failure
            if path in auto_leaves or path in leaf_paths:
                raise TraceError(
                    f"submodule {path!r} ({sub_cls.__qualname__}) fails to trace even as a leaf: "
                    f"{one_line(sub_exc)}; pass a parent of it in leaf_modules=[...]"
                ) from exc
            auto_leaves[path] = one_line(sub_exc)
    else:  # pragma: no cover - each round adds a new leaf, so this bound is never reached
        raise TraceError(f"could not trace {cls_name}: gave up after making {list(auto_leaves)} leaves")

    return tracer, graph, auto_leaves


def warn_auto_leaves(cls_name: str, auto_leaves: dict[str, str], how: str = "fx-traceable") -> None:
    """Warn, naming the caller of :func:`~lightning_split.graph.capture.trace_module`, which submodules run whole."""
    if auto_leaves:
        listed = "; ".join(f"{path} ({_first_sentence(reason)})" for path, reason in auto_leaves.items())
        warnings.warn(
            f"lightning_split: {len(auto_leaves)} submodule(s) of {cls_name} are not {how} and "
            f"run as opaque leaves: {listed}. Pass leaf_modules=[...] to choose leaves yourself.",
            stacklevel=3,
        )


def split_leaf_spec(module: nn.Module, leaf_modules: Iterable[str | type]) -> tuple[set[str], tuple[type, ...]]:
    """``leaf_modules`` as (submodule paths, module classes); an unknown path is a :class:`TraceError`."""
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


def leaf_paths_of(
    gm: fx.GraphModule, leaf_paths: set[str], auto_leaves: Iterable[str], leaf_types: tuple[type, ...]
) -> tuple[str, ...]:
    """The paths traced as leaves by request or automatically (``torch.nn`` leaves not listed)."""
    leaves = dict.fromkeys(leaf_paths)
    leaves.update(dict.fromkeys(auto_leaves))
    for node in gm.graph.nodes:
        if node.op == "call_module" and leaf_types and isinstance(gm.get_submodule(node.target), leaf_types):
            leaves[str(node.target)] = None
    return tuple(leaves)


def _caused_by(exc: BaseException, culprit: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if current is culprit:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _first_sentence(text: str) -> str:
    head = text.split(". ", 1)[0]
    return head if len(head) <= 120 else head[:117] + "..."
