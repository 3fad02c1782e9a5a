"""Smoke test of the benchmark scripts: they run, agree and write the documented JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_planner_benchmark_quick(tmp_path):
    out = tmp_path / "planner.json"
    cache = tmp_path / "cache"
    command = [sys.executable, "benchmarks/planner.py", "--quick", "--out", str(out), "--cache", str(cache)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
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
    assert len(report["results"]) == 6
    for row in report["results"]:
        assert row["agree"] is True and row["feasible"] is True and row["rel_diff"] <= 1e-9
        for method in ("full", "blockwise"):
            assert row[method]["repeats"] >= 1 and row[method]["median_s"] > 0
        assert row["speedup"] == row["full"]["median_s"] / row["blockwise"]["median_s"]
        assert set(row["baselines"]) == {"device_only", "server_only", "best_layerwise"}
        assert row["optimum_s"] <= min(row["baselines"].values()) * (1 + 1e-9)
    assert report["summary"]["largest_synthetic"]["nodes"] == 1000
