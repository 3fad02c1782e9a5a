"""The compiled engine's fast path: array cut graphs, batched cuts, and blockwise's batching, against the references."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks._common import residual_stack
from lightning_split.planning import ranges
from lightning_split.planning.batchcuts import csgraph_min_cuts, screened_min_cuts
from lightning_split.planning.costmodel import PlanningError
from lightning_split.planning.csgraph_flow import csgraph_min_cut
from lightning_split.planning.cutarrays import INFINITE, range_cut_arrays
from lightning_split.planning.cutgraph import CostGraph, cut_edges, resolve_pins
from lightning_split.planning.mincut import SINK, SOURCE, use_algorithm
from lightning_split.planning.planner import exhaustive, plan
from lightning_split.planning.profile import Link, NodeCost, Profile
from tests.planning.test_mincut import edge_lists
from tests.planning.test_planner import dag_profiles, pins_conflict

TOL = 1e-9
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def as_triples(cut, costs: CostGraph) -> Counter:
    """The array cut graph's edges in cut_edges' labels (SOURCE, SINK, node v, auxiliary costs.n + v)."""
    size = (cut.vertices - 2) // 2

    def label(x: int) -> int:
        if x < 2:
            return SOURCE if x == 0 else SINK
        return cut.lo + x - 2 if x < 2 + size else costs.n + cut.lo + x - 2 - size

    return Counter(
        (label(int(t)), label(int(h)), None if c == INFINITE else int(c))
        for t, h, c in zip(cut.tails, cut.heads, cut.capacities)
    )


@SETTINGS
@given(dag_profiles(), st.data())
def test_range_cut_arrays_are_cut_edges(case, data):
    """The edge-list builder's edges, for the whole graph and for ranges whose leaving nodes are on the server."""
    profile, pin_device, pin_server = case
    if pins_conflict(profile, pin_device, pin_server):
        return
    costs = CostGraph(profile)
    on_device, on_server = resolve_pins(costs, pin_device, pin_server)
    on_device = costs.with_inputs(on_device)
    lo = data.draw(st.integers(0, costs.n - 1))
    hi = data.draw(st.integers(lo, costs.n - 1))
    # Nodes of the range with a consumer past it must be on the server (cut_edges' precondition).
    leaving = {v for v in range(lo, hi + 1) if any(w > hi for w in costs.consumers[v])}
    if leaving & on_device:
        lo, hi = 0, costs.n - 1
    else:
        on_server = on_server | leaving
    expected = Counter(cut_edges(costs, range(lo, hi + 1), on_device, on_server))
    assert as_triples(range_cut_arrays(costs.arrays(), lo, hi, on_device, on_server), costs) == expected


def to_arrays(edges):
    """An edge list over SOURCE, SINK and 0..n-1 as csgraph_min_cuts' part (source 0, sink 1)."""

    def label(x):
        return 0 if x == SOURCE else 1 if x == SINK else x + 2

    vertices = 2 + max((x for u, v, _ in edges for x in (u, v)), default=-1) + 1
    tails = np.array([label(u) for u, _, _ in edges], dtype=np.int64)
    heads = np.array([label(v) for _, v, _ in edges], dtype=np.int64)
    capacities = np.array([INFINITE if c is None else c for _, _, c in edges], dtype=np.int64)
    return tails, heads, capacities, max(vertices, 2)


def bounded(edges):
    return [(u, v, c if c is None else c % 10**12) for u, v, c in edges]


@SETTINGS
@given(st.lists(edge_lists().map(bounded), min_size=1, max_size=4))
def test_batched_cuts_are_the_cuts_one_by_one(graphs):
    """Joined at the source and sink, each graph keeps its own minimum cut and smallest source side."""
    singles = []
    for edges in graphs:
        try:
            singles.append(csgraph_min_cut(edges, SOURCE, SINK))
        except PlanningError:
            singles.append(None)
    if None in singles:
        with pytest.raises(PlanningError):
            csgraph_min_cuts([to_arrays(edges) for edges in graphs])
        return
    batched = csgraph_min_cuts([to_arrays(edges) for edges in graphs])
    for (value, side), (batch_value, reached) in zip(singles, batched):
        back = {SOURCE if x == 0 else SINK if x == 1 else int(x) - 2 for x in reached}
        assert (batch_value, back) == (value, side)


@SETTINGS
@given(st.lists(edge_lists().map(bounded), min_size=1, max_size=4), st.data())
def test_screened_cuts_keep_every_part_that_can_win(graphs, data):
    """A part comes back exact or is screened only when its total cannot beat the ceiling or a part kept."""
    singles = []
    for edges in graphs:
        try:
            singles.append(csgraph_min_cut(edges, SOURCE, SINK))
        except PlanningError:
            return  # no finite cut: the batched call raises, as test_batched_cuts_are_the_cuts_one_by_one checks
    lows = [data.draw(st.integers(0, 10**13)) for _ in graphs]
    highs = [low + data.draw(st.sampled_from([0, 1, 10**9, 10**12])) for low in lows]
    ceiling = data.draw(st.none() | st.integers(0, 3 * 10**13))
    screened = screened_min_cuts([to_arrays(edges) for edges in graphs], lows, highs, ceiling)
    kept_highs = [high + value for high, (value, _), result in zip(highs, singles, screened) if result is not None]
    for low, (value, side), result in zip(lows, singles, screened):
        if result is None:
            assert (ceiling is not None and low + value >= ceiling) or any(h < low + value for h in kept_highs)
        else:
            back = {SOURCE if x == 0 else SINK if x == 1 else int(x) - 2 for x in result[1]}
            assert (result[0], back) == (value, side)
    least = min(low + value for low, (value, _) in zip(lows, singles))
    if ceiling is None or least < ceiling:
        assert kept_highs  # some part that can hold the least total is kept


@pytest.mark.usefixtures("small_segments_batched")
@SETTINGS
@given(dag_profiles())
def test_blockwise_batching_keeps_the_optimum(case):
    """Every non-chain range of two or more nodes batched (the threshold lowered): still the brute-force optimum."""
    profile, pin_device, pin_server = case
    if pins_conflict(profile, pin_device, pin_server):
        return
    optimum = exhaustive(profile, pin_device, pin_server).predicted_step_s
    assert plan(profile, "blockwise", pin_device, pin_server).predicted_step_s <= optimum * (1 + TOL) + 1e-15


@pytest.fixture(scope="module")
def small_segments_batched():
    """SMALL_SEGMENT at 1 for this module's test, so that small random graphs take the batched path."""
    patch = pytest.MonkeyPatch()
    patch.setattr(ranges, "SMALL_SEGMENT", 1)
    yield
    patch.undo()


@pytest.mark.parametrize("mbps", [5.0, 50.0, 500.0])
def test_batched_blockwise_matches_every_engine_on_residual_stacks(mbps, monkeypatch):
    """On a 900-node graph, blockwise with every block batched, full, and both on augmenting paths agree."""
    profile = residual_stack(900, seed=5, link=Link.from_mbps(mbps, rtt_ms=2.0))
    values = [plan(profile, "full").predicted_step_s]
    with monkeypatch.context() as patch:
        patch.setattr(ranges, "SMALL_SEGMENT", 1)
        values.append(plan(profile, "blockwise").predicted_step_s)
    with use_algorithm("augmenting_path"):
        values += [plan(profile, method).predicted_step_s for method in ("full", "blockwise")]
    assert max(values) <= min(values) * (1 + TOL)


def dense_blocks(blocks: int, layers: int, link: Link) -> Profile:
    """DenseNet-like: each block's layers consume the block input and every earlier layer; a concat closes it."""
    nodes = [NodeCost("x", "input", (), 4000, 0.0, 0.0)]
    for b in range(blocks):
        start, features = nodes[-1].name, [nodes[-1].name]
        for i in range(layers):
            name = f"b{b}_l{i}"
            nodes.append(NodeCost(name, "op", tuple(features), 400, 0.004, 0.0004))
            features.append(name)
        nodes.append(NodeCost(f"b{b}_cat", "op", tuple(features), 200 + 1000 * (start == "x"), 0.001, 0.0001))
    return Profile(nodes, [nodes[-1].name], link)


@pytest.mark.parametrize("mbps", [0.1, 1.0, 10.0, 1000.0])
def test_dense_blocks_plan_exactly(mbps):
    """Blocks of 70 layers, so their ranges go to the compiled engine: blockwise equals full."""
    profile = dense_blocks(3, 70, Link.from_mbps(mbps, rtt_ms=2.0))
    assert plan(profile, "blockwise").predicted_step_s == pytest.approx(plan(profile, "full").predicted_step_s, rel=TOL)


def test_a_range_whose_cheap_placement_meets_its_bound_is_not_cut(monkeypatch):
    """At 0.1 Mbit/s the best cut sends the first block's closing tensor alone: found with no min cut at all."""
    profile = dense_blocks(3, 70, Link.from_mbps(0.1, rtt_ms=2.0))
    expected = plan(profile, "full")
    monkeypatch.setattr(ranges, "screened_min_cuts", None)  # any call would fail
    result = plan(profile, "blockwise")
    assert result.cut == expected.cut == ("b0_cat",)
    assert result.predicted_step_s == pytest.approx(expected.predicted_step_s, rel=TOL)
