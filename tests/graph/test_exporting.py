"""Capture through torch.export where fx cannot trace: module paths, kept-whole modules, determinism."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from lightning_split.graph.capture import TraceError, trace_module
from lightning_split.graph.exporting import CONSTANTS
from lightning_split.graph.programs import (
    assemble_output,
    device_outputs,
    device_program,
    device_spec_from_cut,
    server_program,
    used_state,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class DataDependent(nn.Module):
    """Branches on a tensor's value: neither fx nor torch.export can capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return h * 2 if h.sum() > 0 else h


class ShapeBranching(nn.Module):
    """The root branches on a shape (fx cannot trace it, torch.export can); one child branches on values."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.odd = DataDependent()
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        if h.shape[0] > 1:
            h = h - h.mean(0, keepdim=True)
        return self.head(self.drop(self.odd(h)))


def _run(traced, *args):
    """Run the whole graph through the device program (nothing on the server) and rebuild the output."""
    gm = traced.graph_module
    spec = device_spec_from_cut(gm, traced.outputs)
    values = device_program(gm, spec)(*traced.graph_args(*args))
    return assemble_output(gm, dict(zip(device_outputs(gm, spec), values)))


def test_export_keeps_only_the_failing_submodule_whole():
    torch.manual_seed(0)
    model = ShapeBranching().train()
    x = torch.randn(4, 4)
    with pytest.warns(UserWarning, match="torch.export"):
        traced = trace_module(model, (x,))
    assert traced.method == "export"
    assert list(traced.auto_leaves) == ["odd"]
    assert "drop" in traced.leaf_modules  # Dropout reads its training flag when it runs
    paths = {info.module_path for info in traced.nodes}
    assert {"stem", "head", "odd", "drop"} <= paths  # the siblings of the failing module are split-able
    calls = [info for info in traced.nodes if info.op == "call_module"]
    assert [info.target for info in calls] == ["odd", "drop"]
    assert traced.graph_module.get_parameter("stem.weight") is model.stem.weight  # shared, not copied
    for mode in (True, False):
        model.train(mode)
        torch.manual_seed(3)
        expected = model(x)
        torch.manual_seed(3)
        torch.testing.assert_close(_run(traced, x), expected)


def test_an_untraceable_root_is_an_error_naming_both_captures():
    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -x

    with pytest.raises(TraceError, match=r"torch\.export failed too"):
        trace_module(Root(), (torch.randn(2, 4),))


def test_export_is_deterministic_and_independent_of_values():
    torch.manual_seed(0)
    model = ShapeBranching()
    other = copy.deepcopy(model)
    with pytest.warns(UserWarning):
        first = trace_module(model, (torch.randn(4, 4),))
    second = trace_module(other, (torch.zeros(4, 4),), method="export", leaf_modules=list(first.leaf_modules))
    assert first.fingerprint() == second.fingerprint()
    assert [info.name for info in first.nodes] == [info.name for info in second.nodes]


def test_export_refuses_other_shapes():
    with pytest.warns(UserWarning):
        traced = trace_module(ShapeBranching(), (torch.randn(4, 4),))
    with pytest.raises(TraceError, match="drop_last"):
        traced.graph_args(torch.randn(3, 4))


def test_export_leaves_no_trace_on_the_module():
    class Lazy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.mask = None

        def forward(self, x):
            if self.mask is None or self.mask.shape[0] != x.shape[0]:
                self.mask = torch.ones(x.shape[0], 1)
            return self.fc(x) * self.mask

    model = Lazy()
    traced = trace_module(model, (torch.randn(2, 4),), method="export")
    assert model.mask is None  # the export's fake tensor was not left behind
    torch.testing.assert_close(_run(traced, torch.ones(2, 4)), model(torch.ones(2, 4)))


def test_constants_are_program_not_state():
    class WithConstant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.table = torch.arange(4.0)  # a plain attribute: the export lifts it as a constant

        def forward(self, x):
            return self.fc(x) + self.table

    traced = trace_module(WithConstant(), (torch.randn(2, 4),), method="export")
    gm = traced.graph_module
    targets = [str(node.target) for node in gm.graph.nodes if node.op == "get_attr"]
    assert any(target.startswith(CONSTANTS + ".") for target in targets)
    assert set(used_state(gm, [info.name for info in traced.nodes])) == {"fc.weight", "fc.bias"}


def test_gpt2_is_cut_inside_and_returns_its_model_output():
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16, use_cache=False, tie_word_embeddings=False
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 100, (2, 8))
    traced = trace_module(model, (ids,), {"labels": ids})
    assert traced.method == "export" and not traced.auto_leaves
    gm = traced.graph_module
    spec = device_spec_from_cut(gm, ["transformer.h.0"])
    device = {info.name for info in traced.nodes} - set(spec.server_nodes)
    assert {info.module_path for info in traced.nodes if info.name in device} >= {"transformer.h.0.attn.c_attn"}
    device_paths = [info.module_path or "" for info in traced.nodes if info.name in device]
    assert not any(path.startswith("transformer.h.1") for path in device_paths)
    args = traced.graph_args(ids, labels=ids)
    outputs = device_program(gm, spec)(*args)
    values = dict(zip(spec.cut, outputs[: len(spec.cut)]))
    server = server_program(gm, spec)(*[values[name] for name in spec.cut])
    result = assemble_output(gm, dict(zip(spec.server_outputs, server)))
    expected = model(ids, labels=ids)
    assert type(result) is type(expected)
    torch.testing.assert_close(result.loss, expected.loss)
    torch.testing.assert_close(result.logits, expected.logits)
