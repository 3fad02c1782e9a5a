"""The examples run: each CIFAR-10 model trains split on a few synthetic batches, the demo and a
remote run work, and the one-line-change example's diff is current and its two scripts agree."""

from __future__ import annotations

import importlib
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from examples import _cifar
from lightning_split import Link
from tests.helpers import ROOT, ServeProcess, run_python

QUICK = ["--limit-batches", "2", "--batch-size", "4", "--synthetic-size", "16"]

# (script, a cut that splits it): a named cut keeps these checks independent of the planner's costs.
EXAMPLES = {
    "cifar10_resnet18": "layer1",
    "cifar10_vgg16": "features.23",
    "cifar10_alexnet": "features.5",
    "cifar10_mobilenetv2": "features.3",
}
SLOW = {"cifar10_resnet18", "cifar10_vgg16"}


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder: no CIFAR-10 there (synthetic data), Lightning's logs stay out of the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_split_run(result: _cifar.RunResult, cut_source: str) -> None:
    plan = result.strategy.plan
    assert plan is not None and plan.source == cut_source
    assert plan.spec.server_nodes, "the server got no nodes"
    assert plan.spec.cut, "no tensor crosses to the server"
    assert result.traffic["split/bytes_up"] > 0 and result.traffic["split/bytes_down"] > 0
    assert result.traffic["split/server_compute_s"] > 0
    for name in ("train_acc", "val_acc"):
        assert 0.0 <= result.metrics[name] <= 1.0 and math.isfinite(result.metrics[name])


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in EXAMPLES])
def test_cifar_example_trains_split_on_embedded_server(script, in_tmp, capsys, caplog):
    cut = EXAMPLES[script]
    module = importlib.import_module(f"examples.{script}")
    result = module.main([*QUICK, "--cut", cut, "--link", "1gbit,1ms"])
    assert_split_run(result, f"cut={cut}")
    assert result.strategy.link == Link.parse("1gbit,1ms")
    out = capsys.readouterr().out
    assert "no CIFAR-10 under data" in out and "synthetic" in out
    final = out.strip().splitlines()[-1]
    assert final.startswith("final: train_acc=") and "MiB up" in final
    assert "lightning-split plan" in caplog.text and f"placement (cut={cut})" in caplog.text


@pytest.mark.slow
def test_demo_trains_split(in_tmp, capsys, caplog):
    """The README's demo (`python examples/cifar10_split.py`) passes options through to the ResNet-18 example."""
    from examples import cifar10_split

    result = cifar10_split.main([*QUICK, "--model", "resnet18", "--cut", "layer2"])
    assert_split_run(result, "cut=layer2")
    assert "net_layer2" in result.strategy.plan.spec.cut[0]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("final: train_acc=")


@pytest.mark.slow
def test_demo_plans_for_a_named_target_and_trains_that_split(in_tmp, capsys):
    """By default the demo plans for a Jetson Nano and a T4 over 50 Mbit/s, says why, draws it and trains that cut."""
    from examples import cifar10_split
    from lightning_split.planning.constraints import private_input_violations

    result = cifar10_split.main(QUICK)
    out = capsys.readouterr().out
    assert out.startswith("target nano-t4: a Jetson Nano and a T4 over 50 Mbit/s Wi-Fi")
    assert "estimated by the roofline of jetson-nano and t4" in out
    assert "Against the baselines" in out and "Device memory:" in out and "Device energy:" in out
    assert "no raw input crosses: x stays on the device" in out
    assert "wrote the plan picture to plan_nano-t4.png" in out
    assert (in_tmp / "plan_nano-t4.png").read_bytes().startswith(b"\x89PNG")
    assert_split_run(result, "auto")
    placement = result.strategy.plan
    assert placement.profile.extra["device"] == "jetson-nano" and placement.profile.extra["server"] == "t4"
    assert result.strategy.link == Link.parse("50mbit,5ms") and placement.profile.link == Link.parse("50mbit,5ms")
    assert not private_input_violations(placement.profile, placement.plan.device)
    assert f"trained cut: {', '.join(placement.spec.cut)}" in out
    traffic = next(line for line in out.splitlines() if line.startswith("traffic per step: predicted"))
    up, down = (float(ratio) for ratio in re.search(r"\(([\d.]+)x and ([\d.]+)x", traffic).groups())
    # What crossed is the predicted activations, gradients and outputs, plus the messages' headers.
    assert 1.0 <= up < 1.5 and 1.0 <= down < 1.5, traffic


def test_demo_targets_are_known_presets():
    from examples import cifar10_split
    from lightning_split.planning.hardware import preset, radio

    assert "nano-t4" in cifar10_split.TARGETS and len(cifar10_split.TARGETS) >= 4
    for target in cifar10_split.TARGETS.values():
        assert preset(target.device, role="device") and preset(target.server, role="server")
        assert Link.parse(target.link) and radio(target.radio)


@pytest.mark.slow
def test_auto_cut_is_the_planned_optimum(in_tmp, caplog):
    """With the default ``--cut auto`` the example trains on the planner's placement, whichever side wins."""
    from examples import cifar10_alexnet
    from lightning_split.planning.baselines import best_layerwise, device_only, server_only
    from lightning_split.planning.constraints import respects_private_inputs

    result = cifar10_alexnet.main(QUICK)
    plan = result.strategy.plan
    assert plan is not None and plan.source == "auto" and plan.plan is not None
    predicted = plan.predicted_step_s()
    assert predicted is not None and plan.baselines
    # Private inputs are on by default: the plan is optimal among the placements that keep the
    # raw inputs on the device (server-only, and a layer-wise cut at the input, are not among them).
    profile = plan.profile
    assert respects_private_inputs(profile, plan.plan.device)
    feasible = [b(profile) for b in (device_only, server_only, best_layerwise)]
    feasible = [b.predicted_step_s for b in feasible if respects_private_inputs(profile, b.device)]
    assert feasible and all(predicted <= value * (1 + 1e-9) for value in feasible), plan.describe()
    assert "placement (auto)" in caplog.text and "predicted step" in caplog.text
    assert math.isfinite(result.metrics["val_acc"])


def test_demo_defaults_yield_to_given_options():
    args = _cifar.parse_args(["--limit-batches", "20", "--limit-batches", "3"], "demo", default_lr=0.1)
    assert args.limit_batches == 3 and args.lr == 0.1 and args.cut == "auto" and args.server is None


@pytest.mark.slow
def test_two_terminals_serve_and_example_command(in_tmp):
    """`lightning-split serve --model examples...` in one process, the example script as a command in another."""
    (in_tmp / "token.txt").write_text("s3cret\n")
    server = ServeProcess("--model", "examples.cifar10_alexnet:CifarAlexNet", "--token-file", str(in_tmp / "token.txt"))
    options = ["--server", server.url, "--token", "s3cret", "--cut", "features.2"]
    try:
        proc = run_python([ROOT / "examples" / "cifar10_alexnet.py", *QUICK, *options], cwd=in_tmp, env=server.env)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "placement (cut=features.2)" in proc.stderr and "cut tensor net_features_2" in proc.stderr
    final = proc.stdout.strip().splitlines()[-1]
    assert final.startswith("final: train_acc=") and "split traffic of the last step" in final
    up = float(final.split("last step: ")[1].split(" MiB up")[0])
    assert up > 0
    assert not any("Traceback" in line for line in server.stderr), "".join(server.stderr)


def test_cut_just_before_an_inplace_relu_trains(in_tmp):
    from examples import cifar10_alexnet

    result = cifar10_alexnet.main([*QUICK, "--cut", "features.0"])
    assert_split_run(result, "cut=features.0")


def test_model_spec_names_the_module_the_server_imports():
    from examples.cifar10_vgg16 import CifarVGG16

    assert _cifar.model_spec(CifarVGG16) == "examples.cifar10_vgg16:CifarVGG16"


def test_missing_cifar_falls_back_to_learnable_synthetic_data(tmp_path, capsys):
    train = _cifar.cifar10(tmp_path, train=True, synthetic_size=40)
    val = _cifar.cifar10(tmp_path, train=False, synthetic_size=40)
    assert capsys.readouterr().out.count(f"no CIFAR-10 under {tmp_path}") == 2
    images, labels = train.tensors
    assert images.shape == (40, 3, 32, 32) and labels.shape == (40,) and len(val) == 10
    assert not torch.equal(val.tensors[0][:10], images[:10])
    # Each class is its template plus noise, so the nearest template finds most labels.
    templates = torch.stack([images[labels == c].mean(0) for c in labels.unique()])
    nearest = torch.cdist(images.flatten(1), templates.flatten(1)).argmin(1)
    assert (labels.unique()[nearest] == labels).float().mean() > 0.9


# -- the one-line change --------------------------------------------------------------------

CONVERT = ROOT / "examples" / "convert"


def current_diff() -> str:
    if shutil.which("diff") is None:
        pytest.skip("GNU diff is not installed")
    local, split = "examples/convert/train_local.py", "examples/convert/train_split.py"
    proc = subprocess.run(
        ["diff", "-u", "--label", local, "--label", split, local, split], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 1, proc.stderr  # 1: the files differ
    return proc.stdout


def test_convert_diff_is_current_and_changes_two_lines():
    diff = current_diff()
    assert (CONVERT / "one_line.diff").read_text() == diff
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++"))]
    added = [line for line in body if line.startswith("+")]
    removed = [line for line in body if line.startswith("-")]
    assert len(added) == 2 and len(removed) == 1
    assert added[0] == "+from lightning_split import SplitStrategy"
    trainer_line = removed[0][1:].rsplit(")", 1)[0]
    assert trainer_line.strip().startswith("trainer = L.Trainer(")
    assert added[1][1:] == trainer_line + ', strategy=SplitStrategy(cut="net.4"))'


@pytest.mark.slow
def test_convert_scripts_train_the_same_weights_one_locally_one_split(in_tmp, capsys):
    from examples.convert import train_local, train_split

    local, local_acc = train_local.main(["--epochs", "1"])
    split, split_acc = train_split.main(["--epochs", "1"])
    strategy = split.trainer.strategy
    assert strategy.plan is not None and strategy.plan.spec.server_nodes
    assert list(strategy.plan.spec.cut) == ["net_4"]
    assert strategy.last_traffic["split/bytes_down"] > 0  # the cut's gradient comes back to the device
    assert strategy.last_traffic["split/bytes_up"] > 0
    assert split_acc == pytest.approx(local_acc, abs=1e-6) and local_acc > 0.5
    local_state, split_state = local.state_dict(), split.state_dict()
    assert local_state.keys() == split_state.keys()
    for key, value in local_state.items():
        torch.testing.assert_close(split_state[key], value, atol=1e-5, rtol=0, msg=f"{key} differs")
    assert capsys.readouterr().out.count("validation accuracy: ") == 2
