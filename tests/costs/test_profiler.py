"""The server's costs through the ``profile`` op: every node timed, optimizer steps, the cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from lightning_split.costs.cache import ProfileCache
from lightning_split.costs.profiler import Profiler, model_fields
from lightning_split.serve.embedded import EmbeddedServer
from lightning_split.transport import messages
from lightning_split.transport.client import RemoteServer
from lightning_split.transport.optimizers import describe_optimizers
from lightning_split.transport.protocol import ProtocolError, RemoteError
from tests.costs.common import param_bytes, trace
from tests.models import DagNet


def test_profile_op_on_a_serve_process_times_every_node(dagnet_server, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(32, 1, 8, 8)
    traced = trace(model, x)
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
    traced = trace(model, x)
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
    param_nodes = {info.name for info in traced.nodes if param_bytes(traced, info.name)}
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


def test_micro_batch_costs_of_both_sides_come_back_from_the_cache(embedded: EmbeddedServer, tmp_path: Path) -> None:
    """``Profiler(micro_batches=4)``: each side's forward shares and fixed parts, measured, then read back from
    the cache as they were; entries for M=1 and M=4 are kept apart, and M=1 asks nothing more of the server."""
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(32, 1, 8, 8)
    traced = trace(model, x)
    fields = model_fields("tests.models:DagNet", {}, traced, (x,), {})
    remote = RemoteServer(embedded.url)
    pipelined = Profiler(ProfileCache(tmp_path), warmup=1, repeats=2, micro_batches=4)
    plain = Profiler(ProfileCache(tmp_path), warmup=1, repeats=2)
    try:
        server = [pipelined.server_costs(remote, traced, fields) for _ in range(2)]
        server_plain = plain.server_costs(remote, traced, fields)
    finally:
        remote.close()
    device = [pipelined.device_costs(traced, (x,)) for _ in range(2)]
    ops = {info.name for info in traced.nodes if info.op != "placeholder"}
    for first, again in (server, device):
        assert not first.cached and again.cached
        assert ops <= set(first.fixed_s) and ops <= set(first.forward_s)
        assert (again.fixed_s, again.forward_s, again.details) == (first.fixed_s, first.forward_s, first.details)
        assert first.details["micro_batches"] == 4 and first.details["micro_samples"] == 8
        assert "fixed_s" not in first.extras() and first.extras()[f"{first.side}_micro_samples"] == 8
    assert not server_plain.cached and not server_plain.fixed_s and not server_plain.forward_s
    with pytest.raises(ProtocolError, match="'micro_batches' must be 1 to 64"):
        messages.Profile(**fields, warmup=1, repeats=1, micro_batches=0)
    with pytest.raises(ValueError, match="micro_batches must be an integer >= 1"):
        Profiler(micro_batches=0)
