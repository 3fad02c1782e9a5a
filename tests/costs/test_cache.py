"""The cost cache: hits, misses, the key's fields, corrupted entries, the directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_split.costs.cache import ProfileCache
from lightning_split.costs.profiler import Profiler
from tests.costs.common import trace
from tests.models import DagNet


def test_cache_second_call_hits_and_other_shape_misses(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DagNet()
    x = torch.randn(32, 1, 8, 8)
    traced = trace(model, x)
    profiler = Profiler(ProfileCache(tmp_path), warmup=1, repeats=3)

    first = profiler.device_costs(traced, (x,))
    second = profiler.device_costs(traced, (x,))
    print(f"device costs: measured in {first.wall_s:.3f} s, from the cache in {second.wall_s:.4f} s")
    assert not first.cached and second.cached
    assert second.node_s == first.node_s
    assert second.measure_s == pytest.approx(first.measure_s)

    y = torch.randn(16, 1, 8, 8)
    other = profiler.device_costs(trace(model, y), (y,))
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
    traced = trace(model, x)
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
