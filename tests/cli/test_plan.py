"""`lightning-split plan`: docs/profile-format.md (the --json object, table, --out round trip, one-line errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_split.cli import main
from lightning_split.planning.planner import baselines, plan, step_time
from lightning_split.planning.profile import Profile
from lightning_split.report import format_bytes, render_plan
from tests.helpers import ROOT

DAGNET = ["--model", "tests.models:DagNet", "--input-shape", "4,1,8,8"]
# The keys of docs/profile-format.md section 3, the pipelining and constraint fields, memory and energy.
KEYS = {"method", "device", "server", "cut", "predicted_step_s", "breakdown", "baselines", "solve_s"}
KEYS |= {"micro_batches", "codec", "exact", "private_inputs"}
KEYS |= {"objective", "memory", "energy", "baselines_energy_j"}
TERMS = {"device_s", "server_s", "upload_s", "download_s", "rtt_s"}

# The profile example of the original interface contract (the format: docs/profile-format.md), verbatim: its
# "outputs" names "fc", a node the excerpt leaves out.
SPEC_EXAMPLE = {
    "format": "lightning-split-profile/1",
    "link": {"uplink_bytes_per_s": 12500000.0, "downlink_bytes_per_s": 62500000.0, "rtt_s": 0.004},
    "nodes": [
        {"name": "x", "kind": "input", "inputs": [], "out_bytes": 393216, "device_s": 0.0, "server_s": 0.0},
        {"name": "conv1", "kind": "op", "inputs": ["x"], "out_bytes": 2097152, "device_s": 0.0041, "server_s": 0.00012},
    ],
    "outputs": ["fc"],
}


def run_plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code, out, err = run_plan(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)  # the whole of stdout is one JSON object


def write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def check_consistent(result: dict, profile: Profile, method: str) -> None:
    """The plan --json keys, a partition of the nodes, the cut, T and the baselines as the planner computes them."""
    assert set(result) == KEYS
    assert set(result["breakdown"]) == TERMS
    assert set(result["baselines"]) == {"device_only", "server_only", "best_layerwise", "sequential_optimum"}
    assert result["method"] == method
    device, server = set(result["device"]), set(result["server"])
    assert device | server == set(profile.names)
    assert not device & server
    consumers = profile.consumers()
    assert result["cut"] == [n for n in profile.names if n in device and any(c in server for c in consumers[n])]
    assert set(result["cut"]) <= device
    expected = step_time(profile, result["device"])
    assert result["predicted_step_s"] == pytest.approx(expected.total, rel=1e-12, abs=1e-15)
    assert result["breakdown"] == pytest.approx(expected.to_json(), rel=1e-12, abs=1e-15)
    assert sum(result["breakdown"].values()) == pytest.approx(result["predicted_step_s"], rel=1e-12)
    assert result["baselines"] == pytest.approx(
        {**baselines(profile), "sequential_optimum": result["predicted_step_s"]}, rel=1e-12
    )
    assert result["predicted_step_s"] <= min(result["baselines"].values()) * (1 + 1e-9)
    assert result["solve_s"] >= 0


# DagNet on a slow device and a fast link, so part of it goes to the server.
# Compared with section 1's (unconstrained) baselines, so the raw input may cross: --no-private-inputs.
SLOW_DEVICE = ["plan", *DAGNET, "--device-gflops", "0.05", "--uplink-mbps", "1000", "--no-private-inputs"]


@pytest.fixture(scope="module")
def dagnet_profile(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """Where to save the DagNet profile with --out, and the plan command that estimates it."""
    return str(tmp_path_factory.mktemp("plan") / "dagnet.json"), [*SLOW_DEVICE, "--rtt-ms", "0.1"]


def test_model_json_is_consistent_and_out_reads_back(dagnet_profile, capsys):
    path, args = dagnet_profile
    code = main([*args, "--out", path, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    profile = Profile.load(path)
    assert profile.extra["model"] == "tests.models:DagNet" and profile.extra["estimated"] is True
    assert profile.link.rtt_s == pytest.approx(1e-4) and profile.link.downlink_bytes_per_s == pytest.approx(1.25e8)
    check_consistent(result, profile, "blockwise")
    assert result["server"], "the slow device should hand work to the server"

    again = plan_json(capsys, path, "--no-private-inputs")
    for key in ("method", "device", "server", "cut", "predicted_step_s", "breakdown", "baselines"):
        assert again[key] == result[key]


@pytest.mark.parametrize("rtt_ms", ["0", "2"])
def test_methods_are_honoured_and_agree(capsys, tmp_path, rtt_ms):
    path = str(tmp_path / "p.json")
    code = main([*SLOW_DEVICE, "--rtt-ms", rtt_ms, "--out", path, "--json"])
    assert code == 0
    capsys.readouterr()
    profile = Profile.load(path)
    results = {
        method: plan_json(capsys, path, "--method", method, "--no-private-inputs") for method in ("blockwise", "full")
    }
    for method, result in results.items():
        check_consistent(result, profile, method)
    assert results["full"]["predicted_step_s"] == pytest.approx(results["blockwise"]["predicted_step_s"], rel=1e-9)


def test_defaults_of_the_link_and_throughputs(capsys, tmp_path):
    path = str(tmp_path / "p.json")
    result = plan_json(capsys, *DAGNET, "--out", path)
    profile = Profile.load(path)
    assert profile.link.uplink_bytes_per_s == profile.link.downlink_bytes_per_s == pytest.approx(100e6 / 8)
    assert profile.link.rtt_s == pytest.approx(0.002)
    assert profile.extra["device_gflops"] == 50.0 and profile.extra["server_gflops"] == 5000.0
    check_consistent(result, profile, "blockwise")


def test_leaf_module_and_init_args(capsys, tmp_path):
    path = str(tmp_path / "p.json")
    result = plan_json(capsys, *DAGNET, "--leaf-module", "stem", "--init-args", '{"dropout": 0.1}', "--out", path)
    profile = Profile.load(path)
    assert "stem" in profile.names and not any(name.startswith("stem_") for name in profile.names)
    assert profile.extra["init_args"] == {"dropout": 0.1}
    check_consistent(result, profile, "blockwise")


def test_torchvision_factory_resnet18(capsys, tmp_path):
    path = str(tmp_path / "r18.json")
    result = plan_json(
        capsys,
        "--model",
        "torchvision.models:resnet18",
        "--input-shape",
        "1,3,64,64",
        "--out",
        path,
        "--no-private-inputs",
    )
    profile = Profile.load(path)
    assert len(profile.nodes) > 60 and profile.node("fc").extra["shape"] == [1, 1000]
    check_consistent(result, profile, "blockwise")


def test_table_shows_the_cut_the_time_and_the_baselines(capsys, tmp_path):
    # A chain whose middle tensor is the smallest: the plan cuts there.
    mb = 1024 * 1024
    nodes = [
        {"name": "x", "kind": "input", "inputs": [], "out_bytes": 4 * mb, "device_s": 0, "server_s": 0},
        {"name": "stem", "kind": "op", "inputs": ["x"], "out_bytes": 3 * 1024, "device_s": 0.002, "server_s": 0.001},
        {"name": "body", "kind": "op", "inputs": ["stem"], "out_bytes": 8 * mb, "device_s": 1.0, "server_s": 0.01},
        {"name": "head", "kind": "op", "inputs": ["body"], "out_bytes": 40, "device_s": 0.1, "server_s": 0.001},
    ]
    nodes[1]["shape"] = [1, 12, 8, 8]
    data = {
        "format": "lightning-split-profile/1",
        "link": {"uplink_bytes_per_s": 1.25e7, "downlink_bytes_per_s": 1.25e7, "rtt_s": 0.002},
        "nodes": nodes,
        "outputs": ["head"],
        "model": "toy chain",
    }
    path = write(tmp_path / "toy.json", data)
    code, out, err = run_plan(capsys, path)
    assert code == 0, err
    assert out.startswith("Plan for toy chain\n")
    assert "4 nodes; link 100 Mbit/s up, 100 Mbit/s down, rtt 2 ms" in out
    assert "1 tensor crosses to the server (3.00 KiB per step" in out
    cut_row = next(line for line in out.splitlines() if line.split()[:1] == ["stem"])
    assert cut_row.split() == ["stem", "1x12x8x8", "3.00", "KiB"]
    assert "Model outputs sent back to the device: head (-, 40 B)" in out
    for label in ("device compute", "server compute", "upload", "download", "round trips", "total (predicted step)"):
        assert label in out
    profile = Profile.load(path)
    result = plan_json(capsys, path)
    assert result["cut"] == ["stem"]
    for key, label in (("device_only", "device only"), ("server_only", "server only"), ("best_layerwise", "best")):
        value = result["baselines"][key]
        row = next(line for line in out.splitlines() if line.strip().startswith(label))
        saved = 100 * (value - result["predicted_step_s"]) / value
        assert f"{value * 1e3:.3f}" in row and f"{saved:.1f}%" in row
    assert "Solved in" in out
    assert render_plan(profile, plan(profile), baselines(profile), title="T").startswith("Plan for T\n")


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1024, 15 * 1024, 3 * 1024**2 // 2, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.00 KiB",
        "15.0 KiB",
        "1.50 MiB",
        "5.00 GiB",
    ]


def test_spec_section_2_example(capsys, tmp_path):
    code, out, err = run_plan(capsys, write(tmp_path / "verbatim.json", SPEC_EXAMPLE))
    assert code == 2 and not out
    assert "output 'fc' is not a node of the profile" in err

    fixed = dict(SPEC_EXAMPLE, outputs=["conv1"])
    path = write(tmp_path / "spec.json", fixed)
    result = plan_json(capsys, path)
    check_consistent(result, Profile.load(path), "blockwise")
    # 384 KiB at 12.5/62.5 MB/s costs 38 ms up and down, far more than conv1's 4.1 ms on the device.
    assert result["device"] == ["x", "conv1"] and result["predicted_step_s"] == pytest.approx(0.0041)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json"], "cannot read the profile missing.json: No such file or directory"),
        (["{bad}"], "not valid JSON"),
        (["{nodes}"], "malformed profile"),
        (["{nofield}"], "lacks field(s) out_bytes"),
        (["{spec}", "--uplink-mbps", "10"], "--uplink-mbps only apply with --model"),
        (["{spec}", *DAGNET], "either PROFILE.json or --model, not both"),
        ([], "give a profile file"),
        (["--model", "tests.nonexistent:Net", "--input-shape", "1,2"], "cannot import module 'tests.nonexistent'"),
        (["--model", "tests.models:NoSuchNet", "--input-shape", "1,2"], "has no attribute 'NoSuchNet'"),
        (["--model", "tests.models", "--input-shape", "1,2"], "must look like 'package.module:ClassName'"),
        (["--model", "tests.models:DagNet", "--input-shape", "4,x,8"], "--input-shape must be positive integers"),
        (["--model", "tests.models:DagNet", "--input-shape", "4,0,8,8"], "--input-shape must be positive integers"),
        (["--model", "tests.models:DagNet"], "an input shape is needed"),
        (["--model", "tests.models:DagNet", "--input-shape", "4,3,8,8"], "cannot trace tests.models:DagNet"),
        ([*DAGNET, "--init-args", "[1]"], "--init-args must be a JSON object"),
        ([*DAGNET, "--init-args", '{"nope": 1}'], "cannot build tests.models:DagNet: TypeError"),
        ([*DAGNET, "--device-gflops", "0"], "device_gflops must be a positive"),
        ([*DAGNET, "--uplink-mbps", "-1"], "bad link"),
    ],
)
def test_errors_are_one_line_with_exit_status_2(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    write(tmp_path / "nodes.json", dict(SPEC_EXAMPLE, nodes=[1, 2]))
    nofield = dict(SPEC_EXAMPLE, nodes=[{k: v for k, v in SPEC_EXAMPLE["nodes"][0].items() if k != "out_bytes"}])
    write(tmp_path / "nofield.json", nofield)
    write(tmp_path / "spec.json", dict(SPEC_EXAMPLE, outputs=["conv1"]))
    monkeypatch.syspath_prepend(str(ROOT))
    names = {"{bad}": "bad.json", "{nodes}": "nodes.json", "{nofield}": "nofield.json", "{spec}": "spec.json"}
    code, out, err = run_plan(capsys, *[names.get(arg, arg) for arg in args])
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if not line.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1, err
    assert lines[0].startswith("lightning-split plan: error: ")
    assert message in lines[0]


def test_real_subprocess(tmp_path):
    path = tmp_path / "dagnet.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "lightning_split.cli", "plan", *DAGNET, "--out", str(path), "--json"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    check_consistent(result, Profile.load(path), "blockwise")


def test_private_inputs_are_kept_on_the_device_by_default(capsys):
    """A fast server and link would take the raw input; by default it never leaves the device."""
    fast = ["plan", *DAGNET, "--device-gflops", "0.05", "--uplink-mbps", "1000", "--rtt-ms", "0.1", "--json"]
    assert main(fast) == 0
    private = json.loads(capsys.readouterr().out)
    assert main([*fast, "--no-private-inputs"]) == 0
    open_ = json.loads(capsys.readouterr().out)
    assert "x" in open_["cut"] and open_["private_inputs"] is False, "without the constraint the input crosses"
    assert "x" not in private["cut"] and private["private_inputs"] is True
    assert private["predicted_step_s"] >= open_["predicted_step_s"]
    assert private["baselines"]["sequential_optimum"] == private["predicted_step_s"]


def test_micro_batches_and_codec_plan_the_pipelined_step(capsys):
    base = ["plan", *DAGNET, "--device-gflops", "0.05", "--uplink-mbps", "10", "--rtt-ms", "1", "--json"]
    assert main([*base, "--micro-batches", "4", "--codec", "fp16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["micro_batches"] == 4 and result["codec"] == "fp16" and result["exact"] is True
    assert result["predicted_step_s"] <= result["baselines"]["sequential_optimum"] * (1 + 1e-9)
    assert main([*base, "--micro-batches", "0"]) == 2
    assert "--micro-batches 0" in capsys.readouterr().err
