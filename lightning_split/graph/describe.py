"""The model's description: what a server needs to rebuild and check the device's graph.

A device never sends code or data. It names the model (``pkg.module:Class`` and its
constructor arguments) and describes its trace: the graph's fingerprint, a per-node summary
(to say where two traces differ), the leaf modules it was traced with, how it was
captured (torch.fx or torch.export), and the shapes and dtypes of the batch
(:func:`example_of`). The server instantiates its own copy, traces it on
zero tensors of those shapes and compares fingerprints. The ``hello`` op (which adds the
placement, the optimizers and the suffix's state) and the ``profile`` op both carry these
fields; :class:`ModelDescription` is their one owner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_split.graph.capture import TracedModel
from lightning_split.graph.programs import example_skeleton, graph_summary

__all__ = ["ModelDescription", "example_of"]


def example_of(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"args": [...], "kwargs": {...}}`` of one call, every tensor replaced by its dtype and shape."""
    return {"args": example_skeleton(list(args)), "kwargs": example_skeleton(dict(kwargs))}


@dataclass(frozen=True)
class ModelDescription:
    """A traced model as the protocol describes it (shapes, never data or code).

    Attributes:
        model: the ``pkg.module:Class`` the server instantiates.
        init_args: its constructor arguments (JSON values).
        fingerprint: :meth:`TracedModel.fingerprint` of the device's trace.
        graph: ``(name, op, target)`` per node (:func:`~lightning_split.graph.programs.graph_summary`).
        leaf_modules: the module paths traced as single nodes.
        example: the batch's skeleton (:func:`example_of`).
        capture: ``"fx"`` or ``"export"``, :attr:`TracedModel.method`: the server captures its
            copy the same way, so both sides get the same graph.
    """

    model: str
    init_args: Mapping[str, Any]
    fingerprint: str
    graph: tuple[tuple[str, ...], ...]
    leaf_modules: tuple[str, ...]
    example: Mapping[str, Any]
    capture: str = "fx"

    @classmethod
    def of(
        cls, model: str, init_args: Mapping[str, Any], traced: TracedModel, example: Mapping[str, Any]
    ) -> ModelDescription:
        """The description of ``traced``, a trace of ``model(**init_args)`` on the call ``example`` describes."""
        return cls(
            model=model,
            init_args=dict(init_args),
            fingerprint=traced.fingerprint(),
            graph=tuple(tuple(row) for row in graph_summary(traced.graph_module)),
            leaf_modules=tuple(traced.leaf_modules),
            example=dict(example),
            capture=traced.method,
        )

    @classmethod
    def from_wire(cls, fields: Mapping[str, Any]) -> ModelDescription:
        """A description from the fields :meth:`to_wire` makes (``graph``, ``leaf_modules``, ``capture`` optional)."""
        return cls(
            model=str(fields["model"]),
            init_args=dict(fields["init_args"]),
            fingerprint=str(fields["fingerprint"]),
            graph=tuple(tuple(str(part) for part in row) for row in fields.get("graph", [])),
            leaf_modules=tuple(str(path) for path in fields.get("leaf_modules", ())),
            example=dict(fields["example"]),
            capture=str(fields.get("capture", "fx")),
        )

    def to_wire(self) -> dict[str, Any]:
        """The description as the ``hello`` and ``profile`` ops carry it (fresh containers, safe to extend).

        Keys: ``model``, ``init_args``, ``fingerprint``, ``graph``, ``leaf_modules``, ``example``, ``capture``.
        """
        return {
            "model": self.model,
            "init_args": dict(self.init_args),
            "fingerprint": self.fingerprint,
            "graph": [list(row) for row in self.graph],
            "leaf_modules": list(self.leaf_modules),
            "example": dict(self.example),
            "capture": self.capture,
        }
