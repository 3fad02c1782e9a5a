"""The model's description: one owner of the fields ``hello`` and ``profile`` carry."""

from __future__ import annotations

import json

import torch

from lightning_split.graph.capture import trace_module
from lightning_split.graph.describe import ModelDescription, example_of
from lightning_split.graph.programs import graph_summary
from tests.models import DagNet


def _description() -> tuple[ModelDescription, object]:
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(4, 1, 8, 8)
    traced = trace_module(model, (x,), {}, ["stem"])
    return ModelDescription.of("tests.models:DagNet", {"lr": 0.1}, traced, example_of((x,), {"scale": 2.0})), traced


def test_wire_fields_are_the_hello_fields_in_order() -> None:
    description, traced = _description()
    wire = description.to_wire()
    assert list(wire) == ["model", "init_args", "fingerprint", "graph", "leaf_modules", "example", "capture"]
    assert wire["capture"] == "fx"  # DagNet traces with fx; the server captures its copy the same way
    assert wire["model"] == "tests.models:DagNet" and wire["init_args"] == {"lr": 0.1}
    assert wire["fingerprint"] == traced.fingerprint()
    assert wire["graph"] == graph_summary(traced.graph_module)
    assert wire["leaf_modules"] == ["stem"]
    assert wire["example"] == {"args": [{"$tensor": ["float32", [4, 1, 8, 8]]}], "kwargs": {"scale": 2.0}}
    json.dumps(wire)  # shapes and names only: plain JSON, no tensors


def test_wire_round_trip_and_fresh_containers() -> None:
    description, _ = _description()
    assert ModelDescription.from_wire(description.to_wire()) == description
    wire = description.to_wire()
    wire["init_args"]["lr"] = 99
    wire["graph"].clear()
    assert description.to_wire()["init_args"] == {"lr": 0.1} and description.graph


def test_from_wire_without_graph_or_leaf_modules() -> None:
    fields = {"model": "m:M", "init_args": {}, "fingerprint": "f", "example": {"args": [], "kwargs": {}}}
    description = ModelDescription.from_wire(fields)
    assert description.graph == () and description.leaf_modules == ()
