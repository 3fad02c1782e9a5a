"""Nodes that read only metadata (shape, ndim) run where their tensor is; the shapes cross, not the tensor."""

from __future__ import annotations

import torch
from torch import nn

from lightning_split.graph.capture import trace_module
from lightning_split.graph.programs import device_spec_from_cut
from lightning_split.graph.readers import metadata_nodes


class CheckedNorm(nn.Module):
    """timm's BatchNormAct2d pattern: assert the rank, count batches in a buffer, normalise."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, "expected NCHW")
        self.seen.add_(1)
        return self.norm(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.check = CheckedNorm(16)
        self.down = nn.Conv2d(16, 4, 3, stride=4, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = self.check(self.stem(x))
        small = self.down(big)
        b, c, h, w = big.shape  # read in the head's part: only the numbers are needed there
        return self.head(small.reshape(b, c * h * w // 64))


def test_metadata_readers_and_dead_ends_stay_with_their_tensor():
    traced = trace_module(Net(), (torch.randn(2, 3, 16, 16),))
    gm = traced.graph_module
    readers = metadata_nodes(gm)
    assert {"getattr_1", "eq", "_assert"} <= readers
    spec = device_spec_from_cut(gm, ["down"])
    on_server = set(spec.server_nodes)
    assert not readers & on_server
    assert "add_" not in on_server  # the buffer update belongs with its module on the device
    cut_tensors = [name for name in spec.cut if traced.node(name).out_meta[0] == "tensor"]
    assert cut_tensors == ["down"]  # the 2x16x16x16 activation does not cross for its shape
    assert sum(traced.node(name).out_bytes for name in spec.cut) < traced.node("down").out_bytes + 100
