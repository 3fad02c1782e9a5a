import pytest
import torch
from torch import fx, nn

from lightning_split.graph.programs import SplitError, device_spec_from_cut


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential()
        self.model.add_module("layer1", nn.Linear(4, 4))
        self.model.add_module("layer2", nn.Linear(4, 4))
        self.other = nn.Module()
        self.other.layer3 = nn.Linear(4, 2)

    def forward(self, x):
        return self.other.layer3(self.model(x))


def test_cut_by_full_path_and_by_unique_path_suffix():
    gm = fx.symbolic_trace(Wrapped())
    full = device_spec_from_cut(gm, ["model.layer1"])
    assert device_spec_from_cut(gm, ["layer1"]) == full
    assert full.cut == ("model_layer1",)
    assert device_spec_from_cut(gm, ["layer3"]).server_nodes == ()


def test_unknown_cut_names_the_known_paths():
    gm = fx.symbolic_trace(Wrapped())
    with pytest.raises(SplitError, match=r"model\.layer1"):
        device_spec_from_cut(gm, ["layer9"])
    assert torch.is_tensor(gm(torch.zeros(1, 4)))
