"""The per-sample check: what it proves, and what it names when it cannot."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_split.graph.capture import trace_module
from lightning_split.graph.persample import mode_dependent_active, traced_couplings
from tests.models import DagNet, PerSampleNet

BATCH = 6


def couplings(module: nn.Module, *shape: int, leaf_modules=()):
    x = torch.randn(BATCH, *shape)
    return traced_couplings(trace_module(module, (x,), {}, leaf_modules))


class Lambda(nn.Module):
    """A one-layer model whose forward is ``fn`` (after a Linear, so there is something to train)."""

    def __init__(self, fn, features: int = 4) -> None:
        super().__init__()
        self.fn = fn
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.linear(x))


def test_the_per_sample_dag_has_no_coupling():
    assert couplings(PerSampleNet(), 1, 8, 8) == []


def test_batchnorm_in_training_mode_is_named_and_drops_out_in_eval_mode():
    model = DagNet().train()
    found = couplings(model, 1, 8, 8)
    assert [c.where for c in found] == ["stem.1 (BatchNorm2d)"]
    assert "statistics" in found[0].reason
    assert mode_dependent_active(found) == found
    model.eval()
    assert mode_dependent_active(found) == []


def test_dropout_is_mode_dependent_and_p0_is_not_a_coupling():
    assert couplings(DagNet(dropout=0.0).eval(), 1, 8, 8)[0].where == "stem.1 (BatchNorm2d)"
    found = couplings(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2)), 4)
    assert [c.where for c in found] == ["1 (Dropout)"] and found[0].module is not None


def test_batchnorm_without_running_stats_couples_in_eval_mode_too():
    found = couplings(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval(), 4)
    assert len(found) == 1 and found[0].module is None and mode_dependent_active(found) == found


@pytest.mark.parametrize(
    "fn",
    [
        lambda h: torch.flatten(h, 1),
        lambda h: h.view(h.size(0), -1),
        lambda h: h.reshape(-1, 4),
        lambda h: torch.cat([h, h * 2], dim=1),
        lambda h: torch.stack([h, h], dim=1),
        lambda h: h.softmax(dim=-1),
        lambda h: F.log_softmax(h, 1),
        lambda h: h.mean(dim=1, keepdim=True),
        lambda h: h.sum(-1),
        lambda h: h[:, :2],
        lambda h: h[..., 0],
        lambda h: h.unsqueeze(1).transpose(1, 2),
        lambda h: h.unsqueeze(-1).permute(0, 2, 1),
        lambda h: h * h.size(1),
        lambda h: torch.max(h, h.flip(1)),
        lambda h: h @ torch.ones(4, 3),
        lambda h: h.view(h.shape[0], 2, 2).flatten(1),
        lambda h: h.expand(h.size(0), 4).contiguous(),
    ],
)
def test_per_sample_functions_are_proved(fn):
    assert couplings(Lambda(fn), 4) == []


@pytest.mark.parametrize(
    ("fn", "reason"),
    [
        (lambda h: h - h.mean(0), "batch dimension"),
        (lambda h: h / h.sum(), "every dimension"),
        (lambda h: torch.cat([h, h], dim=0), "batch dimension"),
        (lambda h: h.softmax(dim=0), "batch dimension"),
        (lambda h: h.view(BATCH, -1), "hard-codes the batch size"),
        (lambda h: h * h.size(0), "batch size as a number"),
        (lambda h: h.transpose(0, 1), "batch dimension"),
        (lambda h: h[0], "indexes the batch dimension"),
        (lambda h: h[1:], "indexes the batch dimension"),
        (lambda h: h.t() @ h, "transposes"),
        (lambda h: torch.flatten(h), "flattens the batch dimension"),
        (lambda h: h.cumsum(0), "batch dimension"),
        (lambda h: h + torch.randn_like(h), "not a function known"),
    ],
)
def test_coupling_functions_are_named(fn, reason):
    found = couplings(Lambda(fn), 4)
    assert found, "the coupling went unnoticed"
    assert any(reason in c.reason for c in found), [c.describe() for c in found]
    assert all(c.module is None for c in found)


class Opaque(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_a_leaf_module_of_unknown_type_is_not_proved():
    model = nn.Sequential(nn.Linear(4, 4), Opaque())
    found = couplings(model, 4, leaf_modules=[Opaque])
    assert [c.where for c in found] == ["1 (Opaque)"]
    assert "not a module known" in found[0].reason


def test_values_that_do_not_depend_on_the_batch_are_free():
    class ScaledWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.weight / self.weight.sum()  # sums over a parameter, not over the batch
            return x @ w

    assert couplings(ScaledWeight(), 4) == []


def test_batch_values_are_the_nodes_computed_from_the_batch():
    from lightning_split.graph.persample import analyse_traced

    class WithConstant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor):
            return self.linear(x), self.linear.weight.sum()

    traced = trace_module(WithConstant(), (torch.randn(BATCH, 4),), {})
    result = analyse_traced(traced)
    assert result.couplings == ()
    assert "linear" in result.batch_values and "sum_1" not in result.batch_values
