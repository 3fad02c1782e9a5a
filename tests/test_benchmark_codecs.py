"""The codec rows of the delay benchmark: optimal under each codec (brute force on chains), accuracy measured."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lightning_split.planning.pipelined import pipelined_step_time
from lightning_split.planning.profile import Link, Profile, chain_profile

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import their sibling _common
    try:
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


codec_delay = _load("codec_delay")


def test_codec_time_is_memory_bound_passes_on_both_ends():
    costs = codec_delay.codec_s_per_byte(1e9, 4e9)
    assert costs["none"] == 0.0
    assert costs["fp16"] == pytest.approx(1.5 * (1e-9 + 0.25e-9) / 2)
    assert costs["int8"] == pytest.approx(2 * 1.25 * (1e-9 + 0.25e-9) / 2)


@pytest.mark.parametrize("mbps", [1.0, 10.0, 100.0])
def test_codec_rows_are_the_optimum_of_every_prefix_under_each_codec(mbps):
    chain = chain_profile(
        [0.02, 0.05, 0.05, 0.05], [0.001] * 4, [400_000, 200_000, 100_000, 4_000], Link.from_mbps(mbps)
    )
    coding = codec_delay.codec_s_per_byte(2e10, 2e11)
    rows = {row["codec"]: row for row in codec_delay.codec_rows(chain, coding)}
    priced = Profile(chain.nodes, chain.outputs, chain.link, {"codec_s_per_byte": coding})
    for codec, row in rows.items():
        prefixes = [chain.names[: k + 1] for k in range(len(chain.names))]
        best = min(pipelined_step_time(priced, device, 1, codec).total for device in prefixes)
        assert row["step_s"] == pytest.approx(best, rel=1e-9)
        assert row["saved_vs_none"] == pytest.approx(1 - row["step_s"] / rows["none"]["step_s"])
    assert rows["none"]["saved_vs_none"] == 0 and rows["none"]["nodes_moved"] == 0
    assert rows["int8"]["step_s"] <= rows["fp16"]["step_s"] <= rows["none"]["step_s"]  # cheap coding: fewer bytes win


@pytest.mark.slow
def test_digits_accuracy_is_measured_per_codec():
    result = codec_delay.digits_accuracy(seeds=1, epochs=1)
    assert set(result) == {"none", "fp16", "bf16", "int8"}
    for stats in result.values():
        assert 0.5 < stats["mean"] <= 1.0 and len(stats["per_seed"]) == 1
