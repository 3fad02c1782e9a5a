"""The estimator's hardware-preset option: each side costed by its preset's roofline."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_split.costs.estimate import estimate_profile
from lightning_split.costs.sources import cost_source
from lightning_split.graph.capture import trace_module
from lightning_split.planning.hardware import UnknownHardwareError, preset
from lightning_split.planning.memory import device_memory, node_training_bytes
from lightning_split.planning.profile import Link
from lightning_split.planning.roofline import node_seconds

LINK = Link.parse("50mbit,5ms")


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))


def _traced(batch: int = 4):
    torch.manual_seed(0)
    return trace_module(_net(), (torch.randn(batch, 3, 8, 8),))


def test_each_node_costs_the_roofline_of_its_preset():
    traced = _traced()
    profile = estimate_profile(traced, LINK, device="jetson-nano", server="t4")
    nano, t4 = preset("jetson-nano"), preset("t4")
    sizes = {info.name: info.out_bytes for info in traced.nodes}
    for info in traced.nodes:
        node = profile.node(info.name)
        if info.op == "placeholder":
            assert (node.device_s, node.server_s) == (0.0, 0.0)
            continue
        work = info.flops or info.out_bytes / 4  # no FLOPs counted: one per float32 output element
        moved = sum(sizes[n] for n in info.inputs) + info.out_bytes + info.param_bytes
        view = node.extra.get("module_class") == "Flatten"
        assert node.device_s == pytest.approx(node_seconds(work, moved, info.param_bytes > 0, nano, view=view))
        assert node.server_s == pytest.approx(node_seconds(work, moved, info.param_bytes > 0, t4, view=view))
    assert profile.node("_3").device_s == 0.0  # the flatten is a view
    assert profile.node("_1").extra["module_class"] == "BatchNorm2d"
    # Memory-bound: the batch norm moves its tensors, which FLOPs alone would call nearly free.
    flops = estimate_profile(traced, LINK, device_gflops=nano.sustained_gflops, min_node_s=0.0)
    assert profile.node("_1").device_s > 2 * flops.node("_1").device_s
    extra = profile.extra
    assert (extra["device"], extra["server"]) == ("jetson-nano", "t4")
    assert extra["device_gflops"] == nano.sustained_gflops and extra["device_costs"] == "roofline of jetson-nano"


def test_a_side_without_a_preset_keeps_the_flop_estimate():
    traced = _traced()
    mixed = estimate_profile(traced, LINK, server_gflops=1000.0, device="raspberry-pi-4")
    plain = estimate_profile(traced, LINK, device_gflops=1.0, server_gflops=1000.0)
    assert [n.server_s for n in mixed.nodes] == [n.server_s for n in plain.nodes]
    assert "server" not in mixed.extra and mixed.extra["server_costs"] == "FLOPs at 1000 GFLOP/s"


def test_every_node_records_its_device_training_footprint():
    traced = _traced()
    profile = estimate_profile(traced, LINK, device="jetson-nano", server="t4", optimizer_slots=1)
    conv = profile.node("_0")
    assert conv.device_mem_bytes == node_training_bytes(conv.param_bytes, conv.out_bytes, 1)
    assert profile.node("_3").device_mem_bytes == 0  # a view saves nothing of its own
    memory = device_memory(profile, profile.names, optimizer_slots=1)
    assert memory.total == sum(node.device_mem_bytes for node in profile.nodes) and not memory.measured


def test_wrong_options_are_refused_naming_what_is_known():
    traced = _traced()
    with pytest.raises(ValueError, match="device_gflops or a device preset, not both"):
        estimate_profile(traced, LINK, device_gflops=10.0, device="jetson-nano")
    with pytest.raises(UnknownHardwareError, match="known presets: devices: jetson-nano"):
        estimate_profile(traced, LINK, device="jetson-nanoo")
    with pytest.raises(KeyError, match="'t4' is a server preset, not a device"):
        estimate_profile(traced, LINK, device="t4")


def test_costs_options_name_the_presets():
    source = cost_source("estimate", {"device": "jetson-nano", "server": "t4"})
    profile = source(_traced(), LINK)
    assert profile.extra["device"] == "jetson-nano" and profile.extra["server"] == "t4"
    assert profile.node("_0").device_s > profile.node("_0").server_s > 0
