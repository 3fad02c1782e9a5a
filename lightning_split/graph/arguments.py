"""The arguments of a traced ``forward``: which become placeholders and which are fixed.

Non-tensor arguments of ``forward`` (flags, ``None``, ints, strings), including defaults
that were not passed, are fixed at their example values while tracing so Python branches on
them resolve; they get no placeholder. Each tensor-carrying argument gets one, addressed by a
*slot*: a parameter name, or ``(name, index)`` / ``(name, key)`` for an entry of ``*args`` /
``**kwargs``. These helpers bind a call to the signature, classify its arguments and read or
replace one slot of a binding.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils import _pytree as pytree

from lightning_split.graph.errors import TraceError

__all__ = ["assign", "bind", "classify_arguments", "lookup", "same_value"]


def bind(signature: inspect.Signature, args: tuple[Any, ...], kwargs: Mapping[str, Any], cls_name: str) -> Any:
    """``signature.bind`` with defaults applied; a call that does not fit is a :class:`TraceError`."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TraceError(f"the example inputs do not fit {cls_name}.forward{signature}: {exc}") from exc
    bound.apply_defaults()
    return bound


def classify_arguments(
    signature: inspect.Signature, bound: inspect.BoundArguments
) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...], list[tuple[str, Any]]]:
    """Split forward's arguments into fixed non-tensor values and placeholder slots.

    Returns the fixed values by label, the (label, slot) pairs to check them later, and
    (placeholder name, slot) pairs.
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


def lookup(bound: inspect.BoundArguments, slot: Any) -> Any:
    """The value bound to ``slot`` (``inspect.Parameter.empty`` if the call has none there)."""
    try:
        if isinstance(slot, tuple):
            name, key = slot
            return bound.arguments[name][key]
        return bound.arguments[slot]
    except (KeyError, IndexError):
        return inspect.Parameter.empty


def assign(arguments: dict[str, Any], signature: inspect.Signature, slot: Any, value: Any) -> None:
    """Put ``value`` in ``slot`` of a bound-arguments mapping (``*args`` / ``**kwargs`` copied, not mutated)."""
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


def same_value(a: Any, b: Any) -> bool:
    """Whether a fixed argument is called with the value it was traced with (same type, equal)."""
    if a is b:
        return True
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:
        return False


def _has_tensor(value: Any) -> bool:
    return any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(value))
