"""Models and helpers the cost tests share."""

from __future__ import annotations

import torch
from torch import nn

from lightning_split.graph.capture import TracedModel, trace_module
from lightning_split.graph.programs import used_state


class ConvNet(nn.Module):
    """Small CNN with BatchNorm, an in-place ReLU, dropout and a residual join."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.conv1(x)))
        h = torch.relu(self.conv2(h)) + h
        h = torch.nn.functional.max_pool2d(self.conv3(h), 2)
        return self.fc(self.drop(torch.flatten(h, 1)))


def trace(model: nn.Module, x: torch.Tensor) -> TracedModel:
    return trace_module(model, (x,))


def param_bytes(traced: TracedModel, name: str) -> int:
    """Bytes of the distinct parameters node ``name`` uses."""
    params = {id(t): t for t in used_state(traced.graph_module, [name]).values() if isinstance(t, nn.Parameter)}
    return sum(p.numel() * p.element_size() for p in params.values())
