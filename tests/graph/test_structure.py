"""What forward returns keeps its type and structure through the capture (fx and torch.export)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest
import torch
from torch import nn

from lightning_split.graph.capture import trace_module
from lightning_split.graph.programs import assemble_output, device_outputs, device_program, device_spec_from_cut
from lightning_split.graph.structure import flatten_output


@dataclasses.dataclass(frozen=True)
class Frozen:
    logits: torch.Tensor
    extra: tuple
    note: str = "kept"
    derived: int = dataclasses.field(default=7, init=False)


class Pair(NamedTuple):
    first: torch.Tensor
    second: torch.Tensor


def test_flatten_and_rebuild_round_trip():
    t = torch.ones(2)
    for value in [t, (t, [t, {"k": t, "n": None}]), Frozen(t, (t, 3)), Pair(t, t * 2), {"a": Frozen(t, ())}]:
        leaves, structure = flatten_output(value)
        rebuilt = structure.rebuild(leaves)
        assert type(rebuilt) is type(value)
        assert repr(rebuilt) == repr(value)
    with pytest.raises(ValueError, match="holds 2 values"):
        flatten_output(Pair(t, t))[1].rebuild([t])


class Returns(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor):
        h = self.a(x)
        out = self.b(h)
        if self.kind == "dataclass":
            return Frozen(out, (h, 3))
        if self.kind == "namedtuple":
            return Pair(out, h)
        return {"out": out, "hidden": [h, None]}


@pytest.mark.parametrize("method", ["fx", "export"])
@pytest.mark.parametrize("kind", ["dataclass", "namedtuple", "dict"])
def test_split_output_has_the_unsplit_type(kind, method):
    model = Returns(kind)
    x = torch.randn(3, 4)
    traced = trace_module(model, (x,), method=method)
    gm = traced.graph_module
    spec = device_spec_from_cut(gm, ["b"])  # everything on the device: the output is rebuilt from its nodes
    values = device_program(gm, spec)(x)
    result = assemble_output(gm, dict(zip(device_outputs(gm, spec), values[len(spec.cut) :])))
    expected = model(x)
    assert type(result) is type(expected)
    assert repr(result) == repr(expected)
