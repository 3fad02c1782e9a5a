"""What ``forward`` returns, kept apart from the values in it, so a split returns the unsplit type.

A traced graph only knows the values a model returns (its output nodes), not the Python
object that holds them: fx turns a returned dict (and a Hugging Face ``ModelOutput``, a dict
subclass) into its own ``immutable_dict``, and ``torch.export`` returns a flat tuple. The
capture therefore records the returned object's *structure* while tracing, and the split
model rebuilds exactly that object (same type, same fields, same nesting) from the values
both sides computed, so ``out.loss`` works split as it does unsplit.

:func:`flatten_output` splits a value into its leaves and an :class:`OutputStructure`;
:meth:`OutputStructure.rebuild` is its inverse. Containers are what ``torch.utils._pytree``
knows (tuple, list, dict, namedtuple, OrderedDict, and the types libraries register, such as
``transformers``' ``ModelOutput`` classes), plus plain dataclasses, which are rebuilt from
their fields. Everything else is a leaf.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import fx
from torch.utils import _pytree as pytree

__all__ = ["RETURNED", "OutputStructure", "ReturnedValue", "flatten_output", "output_leaves"]


@dataclasses.dataclass(frozen=True)
class _Dataclass:
    """A dataclass instance seen as a container of its fields (pytree does not know it)."""

    cls: type
    init_fields: tuple[str, ...]
    other_fields: tuple[str, ...]
    fields: OutputStructure  # the structure of the tuple of field values, init fields first

    def rebuild(self, leaves: Sequence[Any]) -> Any:
        values = self.fields.rebuild(leaves)
        instance = self.cls(**dict(zip(self.init_fields, values)))
        for name, value in zip(self.other_fields, values[len(self.init_fields) :]):
            object.__setattr__(instance, name, value)  # frozen dataclasses too
        return instance


@dataclasses.dataclass(frozen=True)
class OutputStructure:
    """The containers of a returned value, without its leaves.

    Attributes:
        spec: the pytree spec, with plain dataclass instances as leaves.
        expanded: per pytree leaf, ``None`` for a true leaf or the dataclass it stands for.
        size: the number of true leaves (what :meth:`rebuild` takes).
    """

    spec: pytree.TreeSpec
    expanded: tuple[_Dataclass | None, ...]
    size: int

    def rebuild(self, leaves: Sequence[Any]) -> Any:
        """The value with these leaves, in the order :func:`flatten_output` gave them."""
        if len(leaves) != self.size:
            raise ValueError(f"the output structure holds {self.size} values, got {len(leaves)}")
        items: list[Any] = []
        position = 0
        for expanded in self.expanded:
            if expanded is None:
                items.append(leaves[position])
                position += 1
            else:
                items.append(expanded.rebuild(leaves[position : position + expanded.fields.size]))
                position += expanded.fields.size
        return pytree.tree_unflatten(items, self.spec)

    def is_plain(self) -> bool:
        """Whether only exact tuples, lists and dicts hold the leaves (fx returns those as they are).

        fx makes a call of a namedtuple or dataclass constructor a node of the graph, and turns
        a dict subclass (a ``ModelOutput``) into a plain dict.
        """
        return all(expanded is None for expanded in self.expanded) and all(_plain_specs(self.spec))


def flatten_output(value: Any) -> tuple[list[Any], OutputStructure]:
    """The leaves of ``value`` in a fixed order, and the structure that :meth:`OutputStructure.rebuild` refills."""
    items, spec = pytree.tree_flatten(value, is_leaf=_is_plain_dataclass)
    leaves: list[Any] = []
    expanded: list[_Dataclass | None] = []
    for item in items:
        if not _is_plain_dataclass(item):
            leaves.append(item)
            expanded.append(None)
            continue
        init = tuple(f.name for f in dataclasses.fields(item) if f.init)
        other = tuple(f.name for f in dataclasses.fields(item) if not f.init)
        field_leaves, field_structure = flatten_output(tuple(getattr(item, name) for name in init + other))
        leaves.extend(field_leaves)
        expanded.append(_Dataclass(type(item), init, other, field_structure))
    return leaves, OutputStructure(spec, tuple(expanded), len(leaves))


def _is_plain_dataclass(value: Any) -> bool:
    """A dataclass instance that pytree has no registration for (a registered one is pytree's to flatten)."""
    cls = type(value)
    return dataclasses.is_dataclass(cls) and cls not in pytree.SUPPORTED_NODES and not pytree.is_namedtuple_class(cls)


def _plain_specs(spec: pytree.TreeSpec) -> Iterator[bool]:
    if spec.is_leaf():
        return
    yield spec.type in (tuple, list, dict)
    for child in spec.children():
        yield from _plain_specs(child)


@dataclasses.dataclass(frozen=True)
class ReturnedValue:
    """How to rebuild what ``forward`` returns from the values of a graph's nodes.

    Attributes:
        structure: the returned object's containers.
        refs: per leaf, ``("node", name)`` (a cost node's value), ``("attr", target)`` (a
            parameter, buffer or constant of the graph module) or ``("value", constant)``.
    """

    structure: OutputStructure
    refs: tuple[tuple[str, Any], ...]

    @classmethod
    def from_leaves(cls, structure: OutputStructure, leaves: Sequence[Any]) -> ReturnedValue:
        """From the structure's leaves as graph nodes (or constants)."""
        refs = []
        for leaf in leaves:
            if isinstance(leaf, fx.Node):
                refs.append(("attr", str(leaf.target)) if leaf.op == "get_attr" else ("node", leaf.name))
            else:
                refs.append(("value", leaf))
        return cls(structure, tuple(refs))

    def rebuild(self, values: Mapping[str, Any], gm: fx.GraphModule) -> Any:
        """The returned object, from the values of the cost nodes by name."""
        leaves = []
        for kind, ref in self.refs:
            if kind == "node":
                leaves.append(values[ref])
            elif kind == "attr":
                leaves.append(operator.attrgetter(ref)(gm))
            else:
                leaves.append(ref)
        return self.structure.rebuild(leaves)


RETURNED = "lightning_split.returned"  # the GraphModule.meta key of its ReturnedValue


def output_leaves(gm: fx.GraphModule) -> list[Any]:
    """The leaves of what the graph's output node returns (nodes and constants), in pytree order."""
    output = next(node for node in reversed(gm.graph.nodes) if node.op == "output")
    return pytree.tree_leaves(output.args[0])
