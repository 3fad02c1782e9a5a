"""Measured profiles: node timing, link measurement, the cost cache, the profile op and the profile CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_split import cli
from lightning_split.costs.measure import (
    MIN_PROBE_BYTES,
    ProfileCache,
    Profiler,
    measure_link,
    measure_node_costs,
    measured_profile,
    model_fields,
    time_node_costs,
)
from lightning_split.graph.capture import trace_module
from lightning_split.graph.programs import used_state
from lightning_split.planning.profile import Link, Profile
from lightning_split.serve.embedded import EmbeddedServer
from lightning_split.serve.host import ModelHost
from lightning_split.transport import messages
from lightning_split.transport.client import RemoteServer
from lightning_split.transport.optimizers import describe_optimizers
from lightning_split.transport.protocol import ProtocolError, RemoteError
from tests.models import DagNet


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


def _traced(model: nn.Module, x: torch.Tensor):
    return trace_module(model, (x,))


def test_node_costs_cover_every_node_and_are_positive_for_compute() -> None:
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(32, 1, 8, 8)
    traced = _traced(model, x)
    costs = measure_node_costs(traced, (x,), {}, warmup=1, repeats=3)
    assert list(costs) == [info.name for info in traced.nodes]
    for info in traced.nodes:
        if info.op == "placeholder":
            assert costs[info.name] == 0.0
        else:
            assert costs[info.name] > 0.0, info.name
            assert math.isfinite(costs[info.name])


def test_measuring_leaves_state_mode_grads_and_rng_unchanged() -> None:
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(8, 3, 32, 32)
    traced = _traced(model, x)
    model.eval()
    model.drop.train()  # a mixed pattern of flags, to see each one restored
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = x.clone()
    rng = torch.get_rng_state()

    measure_node_costs(traced, (x,), {}, warmup=1, repeats=2)

    assert {name: m.training for name, m in model.named_modules()} == modes
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), "parameters or buffers changed"
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, x_before)


def test_calibrated_costs_add_up_to_the_whole_pass() -> None:
    """Calibration scales every node by one factor so that the nodes sum to the timed whole forward+backward."""
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(8, 3, 32, 32)
    traced = _traced(model, x)
    timed = time_node_costs(traced, (x,), {}, warmup=1, repeats=3)
    assert timed.whole_s is not None and timed.whole_s > 0 and timed.raw_sum_s > 0
    assert timed.scale == pytest.approx(timed.whole_s / timed.raw_sum_s, rel=1e-12)
    assert sum(timed.node_s.values()) == pytest.approx(timed.whole_s, rel=1e-9)
    assert timed.optimizer_s == 0.0 and not timed.optimizer_node_s
    print(f"nodes one by one {timed.raw_sum_s * 1e3:.2f} ms, whole pass {timed.whole_s * 1e3:.2f} ms")

    raw = time_node_costs(traced, (x,), {}, warmup=1, repeats=3, calibrate=False)
    assert raw.whole_s is None and raw.scale == 1.0
    assert sum(raw.node_s.values()) == pytest.approx(raw.raw_sum_s, rel=1e-12)


def _param_bytes(traced, name: str) -> int:
    params = {id(t): t for t in used_state(traced.graph_module, [name]).values() if isinstance(t, nn.Parameter)}
    return sum(p.numel() * p.element_size() for p in params.values())


def test_optimizer_step_goes_to_parameter_nodes_by_bytes() -> None:
    """One optimizer step, timed on copies, is charged only to nodes whose parameters it trains, per byte."""
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(8, 3, 32, 32)
    traced = _traced(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    described = describe_optimizers(model, [optimizer])
    assert described[0]["class"] == "SGD" and described[0]["defaults"]["momentum"] == 0.9

    timed = time_node_costs(traced, (x,), {}, warmup=1, repeats=3, optimizers=described)
    shares = timed.optimizer_node_s
    with_params = {info.name for info in traced.nodes if _param_bytes(traced, info.name)}
    assert set(shares) == with_params == {"conv1", "bn", "conv2", "conv3", "fc"}
    assert timed.optimizer_s > 0 and sum(shares.values()) == pytest.approx(timed.optimizer_s, rel=1e-9)
    per_byte = {name: shares[name] / _param_bytes(traced, name) for name in shares}
    assert max(per_byte.values()) == pytest.approx(min(per_byte.values()), rel=1e-9)
    assert timed.whole_s is not None
    assert sum(timed.node_s.values()) == pytest.approx(timed.whole_s + timed.optimizer_s, rel=1e-9)
    assert all(timed.node_s[name] > shares[name] for name in shares)

    head_only = torch.optim.Adam(model.fc.parameters())
    only_fc = time_node_costs(traced, (x,), {}, warmup=1, repeats=2, optimizers=describe_optimizers(model, [head_only]))
    assert set(only_fc.optimizer_node_s) == {"fc"} and only_fc.optimizer_s > 0


def test_timing_optimizers_leaves_model_and_optimizer_untouched() -> None:
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(8, 3, 32, 32)
    traced = _traced(model, x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    time_node_costs(traced, (x,), {}, warmup=1, repeats=2, optimizers=describe_optimizers(model, [optimizer]))

    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), "parameters or buffers changed"
    assert all(p.grad is None for p in model.parameters())
    assert not optimizer.state, "the real optimizer took a step"
    assert torch.equal(torch.get_rng_state(), rng)


def test_measuring_runs_in_train_mode() -> None:
    """BatchNorm in train mode updates its running statistics: measuring must see that happen (then undo it)."""
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(8, 3, 32, 32)
    traced = _traced(model, x)
    model.eval()
    seen: list[bool] = []
    handle = model.bn.register_forward_hook(lambda module, args, out: seen.append(module.training))
    try:
        measure_node_costs(traced, (x,), {}, warmup=0, repeats=1)
        measure_node_costs(traced, (x,), {}, warmup=0, repeats=1, train=False)
    finally:
        handle.remove()
    assert seen[0] is True and seen[-1] is False
    assert not model.bn.training


def test_measured_profile_keeps_graph_fields_and_plans() -> None:
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(32, 1, 8, 8)
    traced = _traced(model, x)
    device_s = measure_node_costs(traced, (x,), {}, warmup=0, repeats=1)
    server_s = {name: value / 10 for name, value in device_s.items()}
    link = Link.parse("20mbit,10ms")
    profile = measured_profile(traced, device_s, server_s, link, {"server_s_source": "test"})
    assert profile.names == [info.name for info in traced.nodes]
    assert profile.node("a").device_s == device_s["a"] and profile.node("a").server_s == server_s["a"]
    assert profile.node("a").out_bytes == traced.node("a").out_bytes
    assert profile.node("a").inputs == traced.node("a").inputs
    assert profile.extra["server_s_source"] == "test" and profile.extra["estimated"] is False
    assert Profile.from_json(json.loads(profile.dumps())).to_json() == profile.to_json()
    with pytest.raises(ValueError, match="server_s lacks 1 node"):
        measured_profile(traced, device_s, {k: v for k, v in server_s.items() if k != "mix"}, link)


# ---------------------------------------------------------------------------------------------
# The cache


def test_cache_second_call_hits_and_other_shape_misses(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DagNet()
    x = torch.randn(32, 1, 8, 8)
    traced = _traced(model, x)
    profiler = Profiler(ProfileCache(tmp_path), warmup=1, repeats=3)

    first = profiler.device_costs(traced, (x,))
    second = profiler.device_costs(traced, (x,))
    print(f"device costs: measured in {first.wall_s:.3f} s, from the cache in {second.wall_s:.4f} s")
    assert not first.cached and second.cached
    assert second.node_s == first.node_s
    assert second.measure_s == pytest.approx(first.measure_s)

    y = torch.randn(16, 1, 8, 8)
    other = profiler.device_costs(_traced(model, y), (y,))
    assert not other.cached
    assert len(list(tmp_path.glob("device-*.json"))) == 2

    uncached = Profiler(None, warmup=1, repeats=3).device_costs(traced, (x,))
    assert not uncached.cached


def test_cache_key_covers_repeats_and_side(tmp_path: Path) -> None:
    cache = ProfileCache(tmp_path)
    example = {"args": [torch.zeros(2, 3)], "kwargs": {}}
    key = ProfileCache.key("f" * 64, example, "device", "cpu (2 threads)", 2, 5)
    cache.put(key, {"x": 0.0, "a": 0.001}, 0.5, "cpu (2 threads)")
    assert cache.get(key) is not None
    assert cache.get(ProfileCache.key("f" * 64, example, "device", "cpu (2 threads)", 2, 6)) is None
    assert cache.get(ProfileCache.key("f" * 64, example, "server", "cpu (2 threads)", 2, 5)) is None
    assert cache.get(ProfileCache.key("f" * 64, example, "device", "cpu (4 threads)", 2, 5)) is None
    assert cache.get(ProfileCache.key("f" * 64, example, "device", "cpu (2 threads)", 2, 5, calibrate=False)) is None
    sgd = [{"class": "SGD", "defaults": {"lr": 0.1}, "groups": [{"params": ["a.weight"], "hparams": {"lr": 0.1}}]}]
    with_sgd = ProfileCache.key("f" * 64, example, "device", "cpu (2 threads)", 2, 5, optimizers=sgd)
    assert cache.get(with_sgd) is None
    cache.put(with_sgd, {"x": 0.0, "a": 0.002}, 0.5, "cpu (2 threads)", {"scale": 1.25, "optimizer_s": 0.001})
    hit = cache.get(with_sgd)
    assert hit is not None and hit.node_s["a"] == 0.002 and hit.details == {"scale": 1.25, "optimizer_s": 0.001}
    assert not list(tmp_path.glob("*.tmp")), "a temporary file was left behind"


@pytest.mark.parametrize("garbage", ["{not json", '{"key": 1}', "[]", ""])
def test_corrupted_cache_entry_is_ignored_with_a_warning(tmp_path: Path, garbage: str) -> None:
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(8, 1, 8, 8)
    traced = _traced(model, x)
    profiler = Profiler(ProfileCache(tmp_path), warmup=0, repeats=1)
    profiler.device_costs(traced, (x,))
    (entry,) = tmp_path.glob("device-*.json")
    entry.write_text(garbage)
    with pytest.warns(UserWarning, match="corrupted profile cache entry"):
        again = profiler.device_costs(traced, (x,))
    assert not again.cached
    assert profiler.device_costs(traced, (x,)).cached  # the measurement replaced the bad entry


def test_cache_directory_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_SPLIT_CACHE", str(tmp_path / "here"))
    assert ProfileCache().directory == tmp_path / "here"


# ---------------------------------------------------------------------------------------------
# The link and the server


@pytest.fixture(scope="module")
def embedded() -> EmbeddedServer:
    host = ModelHost(lambda init: DagNet(**dict(init)), "tests.models:DagNet")
    with EmbeddedServer(host) as server:
        yield server


def test_measure_link_sees_the_emulated_delay(embedded: EmbeddedServer) -> None:
    """The emulator adds 40 ms and 20 Mbit/s on top of loopback; the measurement sees the delay.

    What holds on any machine: a sleep never undershoots, so the measured round trip is at least
    the emulated 40 ms, and the rates are finite and positive. How close the measured rates come
    to 20 Mbit/s is a timing figure, reported by ``benchmarks/prediction.py`` (RESULTS.md).
    """
    loopback, remote = RemoteServer(embedded.url), RemoteServer(embedded.url, link_limit="20mbit,40ms")
    try:
        real = measure_link(loopback, 250_000, 250_000, repeats=3)
        link = measure_link(remote, 250_000, 250_000, repeats=3)
    finally:
        loopback.close()
        remote.close()
    print(
        f"measured rtt {link.rtt_s * 1e3:.2f} ms (loopback alone {real.rtt_s * 1e3:.2f} ms), "
        f"up {link.uplink_bytes_per_s * 8e-6:.2f} Mbit/s, down {link.downlink_bytes_per_s * 8e-6:.2f} Mbit/s "
        "(emulated: 40 ms, 20 Mbit/s)"
    )
    assert link.rtt_s >= 0.040 and real.rtt_s > 0
    for rate in (link.uplink_bytes_per_s, link.downlink_bytes_per_s, real.uplink_bytes_per_s):
        assert 0 < rate < math.inf


def test_measure_link_pads_tiny_probes(embedded: EmbeddedServer) -> None:
    remote = RemoteServer(embedded.url)
    try:
        link = measure_link(remote, 10, 10, repeats=2)
    finally:
        remote.close()
    link.validate()
    assert math.isfinite(link.uplink_bytes_per_s) and math.isfinite(link.downlink_bytes_per_s)
    # 3 rounds (one untimed) carry a padded upload and a padded reply each
    assert remote.traffic.bytes_up >= 3 * MIN_PROBE_BYTES
    assert remote.traffic.bytes_down >= 3 * MIN_PROBE_BYTES


def test_profile_op_on_a_serve_process_times_every_node(dagnet_server, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(32, 1, 8, 8)
    traced = _traced(model, x)
    fields = model_fields("tests.models:DagNet", {}, traced, (x,), {})
    remote = RemoteServer(dagnet_server.url)
    profiler = Profiler(ProfileCache(tmp_path), warmup=1, repeats=2)
    try:
        first = profiler.server_costs(remote, traced, fields)
        second = profiler.server_costs(remote, traced, fields)
    finally:
        remote.close()
    assert set(first.node_s) == {info.name for info in traced.nodes}
    assert all(first.node_s[info.name] > 0 for info in traced.nodes if info.op != "placeholder")
    assert not first.cached and second.cached and second.node_s == first.node_s
    assert first.hardware and first.measure_s > 0
    print(f"server costs: {first.describe()}; again: {second.describe()}")


def test_profile_op_adds_the_optimizer_step_to_parameter_nodes(embedded: EmbeddedServer, tmp_path: Path) -> None:
    """The server times the optimizers it is sent over its own parameters; the cache keeps both kinds apart."""
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(32, 1, 8, 8)
    traced = _traced(model, x)
    fields = model_fields("tests.models:DagNet", {}, traced, (x,), {})
    described = describe_optimizers(model, [torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)])
    remote = RemoteServer(embedded.url)
    profiler = Profiler(ProfileCache(tmp_path), warmup=1, repeats=2)
    request = messages.Profile(**fields, warmup=1, repeats=2)
    try:
        (plain,) = remote.call([request])
        (stepped,) = remote.call([dataclasses.replace(request, optimizers=described)])
        (uncalibrated,) = remote.call([dataclasses.replace(request, calibrate=False)])
        with pytest.raises(RemoteError, match=r"not a torch\.optim optimizer"):
            remote.call([dataclasses.replace(request, optimizers=[{**described[0], "class": "os.system"}])])
        without = profiler.server_costs(remote, traced, fields)
        with_sgd = profiler.server_costs(remote, traced, fields, described)
    finally:
        remote.close()
    param_nodes = {info.name for info in traced.nodes if _param_bytes(traced, info.name)}
    assert plain.calibration["optimizer_s"] == 0.0 and not plain.optimizer_node_s
    assert set(stepped.optimizer_node_s) == param_nodes and stepped.calibration["optimizer_s"] > 0
    for name in param_nodes:  # each parameter node costs its calibrated forward+backward plus its share
        assert stepped.node_s[name] > stepped.optimizer_node_s[name] > 0
    assert sum(plain.node_s.values()) == pytest.approx(plain.calibration["whole_s"], rel=1e-9)
    assert uncalibrated.calibration["whole_s"] is None and uncalibrated.calibration["scale"] == 1.0
    assert not without.cached and not with_sgd.cached, "the optimizers must be part of the cache key"
    assert with_sgd.details["optimizer_s"] > 0 and without.details["optimizer_s"] == 0.0
    assert with_sgd.extras()["server_scale"] == with_sgd.details["scale"]


def test_profile_op_fields_optimizers_and_calibrate_are_optional() -> None:
    base = {"op": "profile", "model": "m", "init_args": {}, "fingerprint": "f", "example": {}}
    base.update(warmup=1, repeats=1)
    assert messages.Profile.from_wire(base).to_wire() == base
    assert messages.Profile.from_wire({**base, "optimizers": [], "calibrate": False})
    with pytest.raises(ProtocolError, match="'calibrate' must be bool"):
        messages.Profile.from_wire({**base, "calibrate": 1})
    with pytest.raises(ProtocolError, match="'optimizers' must be list"):
        messages.Profile.from_wire({**base, "optimizers": {}})


def test_profile_builder_plans_from_measured_costs(embedded: EmbeddedServer, tmp_path: Path) -> None:
    """The hook for SplitStrategy(cut="auto"): place_model with measured costs of both sides."""
    from lightning_split.costs.measure import profile_builder
    from lightning_split.runtime.placement import place_model

    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(32, 1, 8, 8)
    remote = RemoteServer(embedded.url)
    lines: list[str] = []
    profiler = Profiler(ProfileCache(tmp_path), warmup=1, repeats=2)
    try:
        build = profile_builder(profiler, remote, "tests.models:DagNet", {}, (x,), {}, report=lines.append)
        plan = place_model(model, (x,), {}, profile_builder=build)
    finally:
        remote.close()
    assert plan.profile is not None and plan.plan is not None
    assert plan.profile.extra["link_source"] == "measured" and plan.profile.extra["estimated"] is False
    assert all(node.device_s > 0 and node.server_s > 0 for node in plan.profile.nodes if node.kind == "op")
    assert [line.split()[0] for line in lines] == ["device", "server"]
    for side in ("device", "server"):  # the calibration is recorded in the profile
        extra = plan.profile.extra
        assert extra[f"{side}_scale"] == pytest.approx(extra[f"{side}_whole_s"] / extra[f"{side}_raw_sum_s"])


# ---------------------------------------------------------------------------------------------
# The command line


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_profile_cli_without_server_plans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    code, _, err = _run_cli(
        capsys,
        "profile", "--model", "tests.models:DagNet", "--input-shape", "32,1,8,8",
        "--warmup", "1", "--repeats", "2", "--cache-dir", str(tmp_path / "cache"), "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "server costs are estimated" in err
    profile = Profile.load(out)
    assert profile.extra["server_s_source"] == "estimated" and profile.extra["link_source"] == "assumed"
    assert profile.extra["device_s_source"] == "measured"
    code, stdout, err = _run_cli(capsys, "plan", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert set(result["device"]) | set(result["server"]) == set(profile.names)


def test_profile_cli_with_server_measures_both_sides(
    dagnet_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "profile.json"
    code, _, err = _run_cli(
        capsys,
        "profile", "--model", "tests.models:DagNet", "--input-shape", "32,1,8,8", "--server", dagnet_server.url,
        "--warmup", "1", "--repeats", "2", "--no-cache", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "link to" in err and "server costs of" in err
    profile = Profile.load(out)
    assert profile.extra["server_s_source"] == "measured" and profile.extra["link_source"] == "measured"
    assert all(node.server_s > 0 for node in profile.nodes if node.kind == "op")
    assert profile.link.rtt_s > 0
    code, stdout, err = _run_cli(capsys, "plan", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["method"] == "blockwise"


def test_profile_cli_refuses_link_with_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_cli(
        capsys,
        "profile", "--model", "tests.models:DagNet", "--server", "ws://127.0.0.1:9", "--link", "10mbit",
        "-o", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert code == 2 and "--link" in err
