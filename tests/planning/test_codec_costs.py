"""Measured codec time in the objective: charged per byte of each transfer, and the optimum stays exact."""

from __future__ import annotations

import pytest

from lightning_split.planning.costmodel import PlanningError
from lightning_split.planning.pipelined import pipelined_step_time
from lightning_split.planning.pipelined_planner import plan_pipelined
from lightning_split.planning.profile import Link, Profile, chain_profile


def _chain(coding: dict[str, float] | None) -> Profile:
    base = chain_profile([0.02, 0.04, 0.04], [0.001] * 3, [300_000, 100_000, 4_000], Link.from_mbps(20.0))
    return Profile(base.nodes, base.outputs, base.link, {"codec_s_per_byte": coding} if coding else {})


def test_codec_time_is_charged_with_each_transfer():
    device = ["x", "n0"]
    free = pipelined_step_time(_chain(None), device, 1, "int8")
    priced = pipelined_step_time(_chain({"int8": 1e-8}), device, 1, "int8")
    assert priced.upload_fwd_s == pytest.approx(free.upload_fwd_s + 300_000 * 1e-8)
    assert priced.download_bwd_s == pytest.approx(free.download_bwd_s + 300_000 * 1e-8)
    assert pipelined_step_time(_chain({"int8": 1e-8}), device, 1, "fp16").total == pytest.approx(
        pipelined_step_time(_chain(None), device, 1, "fp16").total
    )  # only the codec in use is charged


@pytest.mark.parametrize("coding_s", [0.0, 1e-9, 1e-7, 1e-6])
@pytest.mark.parametrize("m", [1, 3])
def test_the_optimum_with_codec_time_is_the_best_prefix(coding_s, m):
    profile = _chain({"int8": coding_s})
    result = plan_pipelined(profile, m, "int8", private_inputs=False)
    prefixes = [profile.names[: k + 1] for k in range(len(profile.names))]
    best = min(pipelined_step_time(profile, device, m, "int8").total for device in prefixes)
    assert result.predicted_step_s == pytest.approx(best, rel=1e-9)


def test_expensive_coding_keeps_everything_on_the_device():
    assert plan_pipelined(_chain({"int8": 1.0}), 1, "int8", private_inputs=False).server == ()


@pytest.mark.parametrize("bad", [{"int8": -1.0}, {"int8": float("inf")}, ["int8"], {"int8": "1"}])
def test_bad_codec_costs_are_refused(bad):
    with pytest.raises(PlanningError, match="codec_s_per_byte"):
        pipelined_step_time(_chain(bad), ["x"], 1, "int8")
