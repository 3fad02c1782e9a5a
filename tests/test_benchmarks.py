"""Smoke test of the benchmark scripts: they run, agree and write the documented JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.helpers import run_python

ROOT = Path(__file__).resolve().parent.parent


def test_planner_benchmark_quick(tmp_path):
    out = tmp_path / "planner.json"
    cache = tmp_path / "cache"
    command = [sys.executable, "benchmarks/planner.py", "--quick", "--out", str(out), "--cache", str(cache)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = run_python(command[1:], cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "agree" in proc.stdout and "resnet18" in proc.stdout and "residual_1000" in proc.stdout

    report = json.loads(out.read_text())
    assert report["agreement"] is True and report["sound"] is True and report["quick"] is True
    machine = report["machine"]
    for key in ("platform", "cpu_count", "python", "torch", "networkx", "timestamp"):
        assert machine[key], key
    assert report["settings"]["links_mbps"] == [10.0, 100.0, 1000.0]
    assert set(report["graphs"]) == {"resnet18", "residual_1000"}
    assert report["graphs"]["residual_1000"]["nodes"] == 1000
    assert report["graphs"]["resnet18"]["trace_s"] > 0  # a fresh cache: it was traced
    assert report["graphs"]["residual_1000"]["boundaries"] == report["graphs"]["residual_1000"]["graph_boundaries"]
    assert len(report["results"]) == 6
    for row in [*report["results"], *report["growth"]]:
        assert row["agree"] is True and row["feasible"] is True and row["rel_diff"] <= 1e-9
        for method in ("full", "blockwise"):
            assert row[method]["repeats"] >= 1 and row[method]["median_s"] > 0
        assert row["speedup"] == row["full"]["median_s"] / row["blockwise"]["median_s"]
        assert set(row["baselines"]) == {"device_only", "server_only", "best_layerwise"}
        assert row["optimum_s"] <= min(row["baselines"].values()) * (1 + 1e-9)
    # Brute force runs on the small graphs (resnet18's 70 nodes included) and agrees with the min cuts.
    small = [row for row in [*report["results"], *report["growth"]] if row["nodes"] <= 100]
    assert {row["graph"] for row in small} == {"resnet18", "residual_18", "residual_48", "branches_2", "branches_4"}
    for row in small:
        assert row["exhaustive"]["median_s"] > 0
        assert set(row["predicted_step_s"]) == {"full", "blockwise", "exhaustive"}
    assert all(row["exhaustive"] is None for row in report["results"] if row["graph"] == "residual_1000")
    assert [row["nodes"] for row in report["growth"]] == [18, 48, 6, 10, 1000]
    summary = report["summary"]
    assert summary["largest_synthetic"]["nodes"] == 1000
    assert summary["zoo_speedup_max"]["graph"] == "resnet18"
    assert summary["zoo_speedup_min"] <= summary["zoo_speedup_geomean"] <= summary["zoo_speedup_max"]["speedup"]
    for name in ("planner_growth.png", "planner_speedup.png"):
        chart = tmp_path / name
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size < 150_000


def test_noise_benchmark_writes_each_fit_and_their_spread(tmp_path):
    out = tmp_path / "noise.json"
    command = ["benchmarks/noise.py", "--fits", "3", "--steps", "3", "--warmup", "1", "--cpu", "-1", "--out", str(out)]
    proc = run_python(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 fits of the same ResNet-18 step" in proc.stdout

    report = json.loads(out.read_text())
    medians = report["medians_s"]
    assert report["benchmark"] == "noise" and len(medians) == 3 and min(medians) > 0
    assert report["spread"] == (max(medians) - min(medians)) / sorted(medians)[1]
    assert report["machine"]["torch"]
