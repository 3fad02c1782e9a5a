"""Cost sources: measured profiles, the measuring profile builder, and the choice of a source."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_split.costs.cache import ProfileCache
from lightning_split.costs.profiler import Profiler
from lightning_split.costs.sources import (
    EstimatedCosts,
    GivenCosts,
    MeasuredCosts,
    cost_source,
    measured_profile,
    profile_builder,
)
from lightning_split.costs.timing import measure_node_costs
from lightning_split.planning.profile import Link, Profile
from lightning_split.runtime.placement import place_model
from lightning_split.serve.embedded import EmbeddedServer
from lightning_split.transport.client import RemoteServer
from tests.costs.common import trace
from tests.models import DagNet


def test_measured_profile_keeps_graph_fields_and_plans() -> None:
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(32, 1, 8, 8)
    traced = trace(model, x)
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


def test_profile_builder_plans_from_measured_costs(embedded: EmbeddedServer, tmp_path: Path) -> None:
    """The hook for SplitStrategy(cut="auto"): place_model with measured costs of both sides."""
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


def test_measured_costs_note_where_each_side_came_from(embedded: EmbeddedServer, tmp_path: Path) -> None:
    """What ``SplitStrategy(costs="measure")`` plans with: notes for the log, hardware and calibration as extras."""
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(32, 1, 8, 8)
    remote = RemoteServer(embedded.url)
    profiler = Profiler(ProfileCache(tmp_path), warmup=1, repeats=2)
    try:
        source = MeasuredCosts(remote, "tests.models:DagNet", {}, (x,), {}, profiler)
        first = place_model(model, (x,), {}, profile_builder=source)
        again = place_model(model, (x,), {}, profile_builder=source)
    finally:
        remote.close()
    assert first.notes["costs"] == "measured" and first.notes["device_costs"].startswith("measured in")
    assert again.notes["device_costs"] == again.notes["server_costs"] == "cache hit"
    assert first.profile is not None and again.profile is not None
    extra = first.profile.extra
    assert extra["model"] == "tests.models:DagNet" and "link_source" not in extra
    assert extra["device_hardware"] and extra["server_hardware"] and extra["server_cached"] is False
    assert again.profile.extra["device_cached"] is True and again.profile.extra["server_cached"] is True
    assert [n.device_s for n in again.profile.nodes] == [n.device_s for n in first.profile.nodes]


class _NotTorchOptim(torch.optim.Optimizer):
    def __init__(self, params) -> None:
        super().__init__(params, {"lr": 0.1})


def test_cost_source_follows_costs_and_costs_options(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(8, 1, 8, 8)
    estimated = cost_source("estimate", {"device_gflops": 10, "min_node_s": 0.0})
    assert isinstance(estimated, EstimatedCosts) and estimated.device_gflops == 10.0
    assert estimated.options == {"min_node_s": 0.0}
    profile = estimated(trace(model, x), Link.parse("10mbit,5ms"))
    path = tmp_path / "profile.json"
    profile.save(path)
    for given in (profile, path, str(path)):
        assert isinstance(cost_source(given), GivenCosts)
    assert cost_source(str(path)).origin == str(path)

    remote: Any = object()  # measured costs connect only when called
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    measured = cost_source(
        "measure",
        {"cache": tmp_path / "cache", "warmup": 1, "repeats": 3, "calibrate": False},
        remote=remote,
        model="tests.models:DagNet",
        init_args={"lr": 0.1},
        args=(x,),
        module=model,
        optimizers=[sgd],
    )
    assert isinstance(measured, MeasuredCosts) and measured.remote is remote
    assert measured.model == "tests.models:DagNet" and measured.init_args == {"lr": 0.1}
    profiler = measured.profiler
    assert isinstance(profiler.cache, ProfileCache) and profiler.cache.directory == tmp_path / "cache"
    assert (profiler.warmup, profiler.repeats, profiler.calibrate) == (1, 3, False)
    assert [o["class"] for o in measured.optimizers] == ["SGD"]
    uncached = cost_source("measure", {"cache": False}, remote=remote, module=model)
    assert isinstance(uncached, MeasuredCosts) and uncached.profiler.cache is None and not uncached.optimizers
    assert isinstance(cost_source("measure", remote=remote).profiler.cache, ProfileCache)  # the default directory


def test_cost_source_describes_optimizers_only_to_measure() -> None:
    """Only measuring times optimizer steps, so only measuring warns about one the server cannot rebuild."""
    model = DagNet()
    foreign = _NotTorchOptim(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cost_source("estimate", module=model, optimizers=[foreign])
    with pytest.warns(UserWarning, match="not a torch.optim class"):
        measured = cost_source("measure", remote=object(), module=model, optimizers=[foreign])
    assert isinstance(measured, MeasuredCosts) and measured.optimizers == []
