"""`lightning-split plan --device PRESET --server PRESET --link TEXT`: roofline costs, memory and energy."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from lightning_split.cli import main
from lightning_split.planning.energy import EnergyModel, step_energy
from lightning_split.planning.hardware import preset
from lightning_split.planning.planner import step_time
from lightning_split.planning.profile import Link, Profile
from tests.cli.test_plan import KEYS

DAGNET = ["--model", "tests.models:DagNet", "--input-shape", "4,1,8,8"]
NANO_T4 = [*DAGNET, "--device", "jetson-nano", "--server", "t4", "--link", "50mbit,5ms"]
MEMORY = {"total_bytes", "parameters_bytes", "gradients_bytes", "optimizer_state_bytes", "activations_bytes",
          "optimizer_slots", "estimated", "device_capacity_bytes", "fits"}  # fmt: skip
ENERGY = {"total_j", "compute_j", "idle_j", "radio_j", "sent_bytes", "received_bytes", "device", "device_assumed",
          "active_w", "idle_w", "idle_known", "radio", "radio_up_j_per_byte", "radio_down_j_per_byte",
          "radio_active_w"}  # fmt: skip


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code = main(["plan", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def nano_t4(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Profile]:
    """The --json object of DagNet planned for a Jetson Nano and a T4 at 50 Mbit/s, and its profile (--out)."""
    out = tmp_path_factory.mktemp("nano") / "profile.json"
    buffer = io.StringIO()  # capsys is function-scoped: capture by hand, once for the module
    with contextlib.redirect_stdout(buffer):
        assert main(["plan", *NANO_T4, "--json", "--out", str(out)]) == 0
    return json.loads(buffer.getvalue()), Profile.load(out)


def test_the_json_object_has_a_placement_memory_and_energy(nano_t4):
    result, profile = nano_t4
    assert set(result) == KEYS
    assert set(result["device"]) | set(result["server"]) == set(profile.names)
    assert result["objective"] == "time"
    assert result["predicted_step_s"] == pytest.approx(step_time(profile, result["device"]).total)
    assert set(result["memory"]) == MEMORY and set(result["energy"]) == ENERGY
    memory = result["memory"]
    assert memory["device_capacity_bytes"] == preset("jetson-nano").memory_bytes and memory["fits"] is True
    assert memory["total_bytes"] == sum(
        node.device_mem_bytes for node in profile.nodes if node.name in set(result["device"])
    )
    energy = result["energy"]
    assert energy["device"] == "jetson-nano" and energy["radio"] == "wifi" and not energy["device_assumed"]
    expected = step_energy(profile, result["device"], EnergyModel.for_device("jetson-nano", "wifi"))
    assert energy["total_j"] == pytest.approx(expected.total_j) and energy["sent_bytes"] == expected.sent_bytes
    assert set(result["baselines_energy_j"]) == {"device_only", "server_only", "best_layerwise"}


def test_the_presets_and_the_link_reach_the_profile(nano_t4):
    _, profile = nano_t4
    assert profile.extra["device"] == "jetson-nano" and profile.extra["server"] == "t4"
    assert profile.extra["device_costs"] == "roofline of jetson-nano"
    assert profile.link == Link.parse("50mbit,5ms")


def test_energy_objective_spends_no_more_than_any_baseline(capsys):
    result = plan_json(capsys, *NANO_T4, "--objective", "energy", "--radio", "lte")
    assert result["objective"] == "energy" and result["energy"]["radio"] == "lte"
    assert all(result["energy"]["total_j"] <= value * (1 + 1e-9) for value in result["baselines_energy_j"].values())


def test_the_table_shows_memory_and_energy(capsys):
    assert main(["plan", *NANO_T4]) == 0
    out = capsys.readouterr().out
    assert "estimated by the roofline of jetson-nano and t4" in out
    assert "Device memory:" in out and "of 3.73 GiB (fits)" in out
    assert "Device energy:" in out and "jetson-nano at 10 W" in out and "Wi-Fi" in out


def test_the_old_flags_still_work_and_energy_assumes_a_nano(capsys):
    result = plan_json(capsys, *DAGNET, "--device-gflops", "0.05", "--uplink-mbps", "1000")
    assert result["server"] and result["energy"]["device"] == "jetson-nano" and result["energy"]["device_assumed"]
    assert result["memory"]["device_capacity_bytes"] is None and result["memory"]["fits"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*DAGNET, "--device", "jetson-nanoo"], "unknown hardware preset 'jetson-nanoo'; known presets: devices:"),
        ([*DAGNET, "--device", "t4"], "'t4' is a server preset, not a device"),
        ([*DAGNET, "--device", "jetson-nano", "--device-gflops", "5"], "device_gflops or a device preset, not both"),
        ([*DAGNET, "--link", "50mbit", "--uplink-mbps", "5"], "give --link or --uplink-mbps, not both"),
        ([*DAGNET, "--link", "fast"], "bad link"),
    ],
)
def test_errors_are_one_line(capsys, args, message):
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_presets_apply_to_models_only(capsys, tmp_path):
    path = tmp_path / "p.json"
    assert main(["plan", *DAGNET, "--out", str(path)]) == 0
    capsys.readouterr()
    assert main(["plan", str(path), "--device", "jetson-nano", "--link", "1mbit"]) == 2
    assert "--device, --link only apply with --model" in capsys.readouterr().err
    # A profile file plans with the radio and objective it is given.
    result = plan_json(capsys, str(path), "--objective", "energy", "--radio", "lte")
    assert result["objective"] == "energy" and result["energy"]["radio"] == "lte"


def test_presets_and_pipelining_together(capsys):
    """The hardware flags and the pipelining flags in one command: every key of both in the JSON."""
    result = plan_json(capsys, *NANO_T4, "--micro-batches", "2", "--codec", "fp16")
    assert set(result) >= KEYS and {"lower_bound", "pipelined", "device_footprint_bytes"} <= set(result)
    assert result["micro_batches"] == 2 and result["codec"] == "fp16" and result["objective"] == "time"
    assert set(result["memory"]) == MEMORY and set(result["energy"]) == ENERGY
    assert result["predicted_step_s"] <= result["baselines"]["sequential_optimum"] * (1 + 1e-9)


def test_energy_objective_is_for_the_sequential_step(capsys):
    """The energy objective with micro-batches is refused with the fix; alone its sequential optimum is T's."""
    assert main(["plan", *NANO_T4, "--objective", "energy", "--micro-batches", "2"]) == 2
    assert "drop --micro-batches" in capsys.readouterr().err
    energy = plan_json(capsys, *NANO_T4, "--objective", "energy")
    fastest = plan_json(capsys, *NANO_T4)
    assert energy["baselines"]["sequential_optimum"] == fastest["predicted_step_s"]
    assert energy["energy"]["total_j"] <= fastest["energy"]["total_j"] * (1 + 1e-9)
