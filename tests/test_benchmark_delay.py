"""The training-delay benchmark: its cost models follow their formulas and a quick run writes sane results."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_split.costs.estimate import estimate_profile
from lightning_split.graph.capture import trace_module
from lightning_split.planning.profile import Link, NodeCost
from tests.helpers import run_python

ROOT = Path(__file__).resolve().parent.parent


def _load_delay():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # delay.py imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("benchmarks_delay", ROOT / "benchmarks" / "delay.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


delay = _load_delay()


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )


def test_flop_costs_of_the_cached_unit_profile_equal_the_library_estimate():
    workload = delay.Workload("tiny", _tiny, (4, 3, 8, 8))
    unit, traced_s = delay.unit_profile(workload, cache_dir=None)
    assert traced_s > 0
    device, server = delay.HARDWARE["nano"], delay.HARDWARE["t4"]
    ours = delay.costed_profile(unit, delay.FlopCost(), device, server, training=True)

    example = torch.randn(workload.input_shape)
    reference = estimate_profile(
        trace_module(_tiny(), (example,)), Link.from_mbps(10), device.sustained_gflops, server.sustained_gflops
    )
    assert [n.name for n in ours.nodes] == [n.name for n in reference.nodes]
    for mine, theirs in zip(ours.nodes, reference.nodes):
        assert mine.device_s == pytest.approx(theirs.device_s, rel=1e-12)
        assert mine.server_s == pytest.approx(theirs.server_s, rel=1e-12)
    assert unit.node("_1").extra["module_class"] == "BatchNorm2d"
    conv = unit.node("_0")
    assert conv.device_s * 1e9 == conv.extra["flops"] > 0  # unit profile: forward GFLOP at 1 GFLOP/s


def test_roofline_node_costs():
    hw = delay.HARDWARE["xavier_nx"]
    cost = delay.RooflineCost()
    size = 4 * 1_000_000
    relu = NodeCost("relu", "op", ("a",), size, 1e-3, 1e-3, {"op": "call_module", "module_class": "ReLU"})
    expected_memory = 3 * (size + size) / (delay.MEMORY_FRACTION * hw.memory_gbs * 1e9)
    assert cost.seconds(relu, size, hw, training=True) == pytest.approx(expected_memory + 2 * hw.launch_s)
    assert cost.seconds(relu, size, hw, training=False) == pytest.approx(expected_memory / 3 + hw.launch_s)

    gflop = 50.0  # a compute-bound convolution with parameters: three kernels in training
    conv = NodeCost("conv", "op", ("a",), 1000, gflop, gflop, {"op": "call_module", "param_bytes": 4000})
    compute = 3 * gflop * 1e9 / (delay.COMPUTE_FRACTION * hw.peak_gflops * 1e9)
    assert cost.seconds(conv, 1000, hw, training=True) == pytest.approx(compute + 3 * hw.launch_s)

    for extra in (
        {"op": "call_function", "target": "torch.flatten"},
        {"op": "call_module", "module_class": "Identity"},
    ):
        view = NodeCost("v", "op", ("a",), size, 1e-3, 1e-3, extra)
        assert delay.is_view(view) and cost.seconds(view, size, hw, training=True) == 0.0


def test_inference_link_sends_one_way_with_one_round_trip():
    link = delay.inference_link(8.0, rtt_ms=10.0)
    assert link.seconds_per_byte_round_trip == pytest.approx(1e-6)
    assert link.rtt_s == pytest.approx(0.005)


@pytest.mark.slow
def test_delay_benchmark_quick(tmp_path):
    out, charts = tmp_path / "delay.json", tmp_path / "charts"
    command = [
        sys.executable, "benchmarks/delay.py", "--quick", "--out", str(out),
        "--charts", str(charts), "--cache", str(tmp_path / "cache"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = run_python(command[1:], cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vs dads_inference" in proc.stdout and "resnet18_cifar" in proc.stdout

    report = json.loads(out.read_text())
    assert report["quick"] is True and report["sound"] is True
    for key in ("platform", "cpu_count", "python", "torch", "timestamp"):
        assert report["machine"][key], key
    assert set(report["models"]) == set(delay.QUICK_WORKLOADS)
    assert all(info["trace_s"] > 0 and info["forward_gflop"] > 0 for info in report["models"].values())
    rows = report["results"]
    assert len(rows) == len(delay.COST_MODELS) * len(delay.QUICK_PAIRS) * 2 * len(delay.QUICK_BANDWIDTHS_MBPS)
    for row in rows:
        assert row["optimal_s"] > 0
        assert set(row["baselines_s"]) == set(delay.BASELINES)
        for key, baseline_s in row["baselines_s"].items():
            assert row["optimal_s"] <= baseline_s * (1 + 1e-9), (row["model"], key)
            assert -1e-9 <= row["reduction"][key] < 1.0
            assert row["reduction"][key] == pytest.approx(1 - row["optimal_s"] / baseline_s)
        assert sum(row["breakdown"].values()) == pytest.approx(row["optimal_s"])
    # A 1 Mbit/s link makes the CIFAR batch's upload cost more than the Nano's whole step, 1000 Mbit/s the reverse.
    nano = [r for r in rows if r["pair"] == "nano/t4" and r["model"] == "resnet18_cifar"]
    slow, fast = min(nano, key=lambda r: r["uplink_mbps"]), max(nano, key=lambda r: r["uplink_mbps"])
    assert slow["optimal_s"] == pytest.approx(slow["baselines_s"]["device_only"])
    assert fast["optimal_s"] < 0.5 * fast["baselines_s"]["device_only"]
    summary = report["summary"]
    for cost_name in delay.COST_MODELS:
        for stats in summary[cost_name]["all"].values():
            assert 0.0 <= stats["median"] <= stats["best"] < 1.0
    for name in ("delay_step_time_roofline.png", "delay_step_time_flops.png", "delay_reduction.png"):
        data = (charts / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < 150_000


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="calibration measures a CUDA GPU")
def test_calibration_measures_the_gpu_and_compares_both_cost_models():
    result = delay.calibrate(["alexnet_cifar"])
    row = result["models"]["alexnet_cifar"]
    assert row["measured_step_s"] > 0 and row["measured_forward_s"] > 0
    assert 0 < row["measured_share_without_flops"] < 1
    for cost_name in delay.COST_MODELS:
        assert row[cost_name]["predicted_step_s"] > row[cost_name]["predicted_forward_s"] > 0
        assert row[cost_name]["median_abs_log10_error"] >= 0
    assert result["measured_launch_us"] > 0


def test_pipelined_grid_rows_are_the_constrained_optimum_never_worse_than_sequential():
    from lightning_split.planning.constraints import raw_nodes

    workload = delay.Workload("tiny", _tiny, (16, 3, 8, 8))
    unit, _ = delay.unit_profile(workload, cache_dir=None)
    rows = []
    for private in (False, True):
        rows += delay.pipelined_grid({"tiny": unit}, [("nano", "t4")], [1.0, 100.0], 1.0, 5.0, private_inputs=private)
    keys = [(r["private_inputs"], r["uplink_mbps"]) for r in rows]
    assert keys == [(False, 1.0), (False, 100.0), (True, 1.0), (True, 100.0)]
    nano, t4 = delay.HARDWARE["nano"], delay.HARDWARE["t4"]
    raw = set(raw_nodes(delay.costed_profile(unit, delay.RooflineCost(), nano, t4, training=True)))
    assert raw, "the input and the first op before a parameter are raw"
    for row in rows:
        assert row["exact"]
        assert row["pipelined_s"] <= row["baselines_s"]["sequential_optimum"] * (1 + 1e-9), "M=1 is a candidate"
        if row["private_inputs"]:
            assert not set(row["cut"]) & raw, "no raw value crosses"
    table = delay.pipelined_table(rows)
    assert "on device" in table and "may cross" in table
