"""The min-cut engines against each other and against brute force, the compiled one above all."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks._common import residual_stack
from lightning_split.planning.costmodel import PlanningError
from lightning_split.planning.csgraph_flow import LIMIT, csgraph_min_cut
from lightning_split.planning.mincut import ALGORITHMS, SINK, SOURCE, default_algorithm, min_cut, use_algorithm
from lightning_split.planning.planner import exhaustive, plan
from lightning_split.planning.profile import Link
from tests.planning.test_planner import dag_profiles, pins_conflict

TOL = 1e-9


@st.composite
def edge_lists(draw, parallel: bool = True):
    """Small random graphs over SOURCE, SINK and up to 7 vertices; capacities from 0 to far past int32, or infinite."""
    n = draw(st.integers(0, 7))
    capacities = st.one_of(
        st.none(), st.integers(0, 20), st.integers(0, 3 * LIMIT), st.integers(0, 10**15), st.just(LIMIT)
    )
    edges, seen = [], set()
    for _ in range(draw(st.integers(0, 24))):
        u = draw(st.sampled_from([SOURCE, *range(n)]))
        v = draw(st.sampled_from([SINK, *range(n)]))
        if u == v or (not parallel and (u, v) in seen):
            continue
        seen.add((u, v))
        edges.append((u, v, draw(capacities)))
    return edges


def brute_force(edges):
    """Every source side: the minimum cut value (None if all are infinite) and the smallest optimal source side."""
    vertices = sorted({x for u, v, _ in edges for x in (u, v)} - {SOURCE, SINK})
    best, sides = None, []
    for chosen in itertools.product((False, True), repeat=len(vertices)):
        side = {SOURCE, *(v for v, take in zip(vertices, chosen) if take)}
        crossing = [c for u, v, c in edges if u in side and v not in side]
        if None in crossing:
            continue
        value = sum(crossing)
        if best is None or value < best:
            best, sides = value, [side]
        elif value == best:
            sides.append(side)
    return best, (set.intersection(*sides) if sides else None)


def solve(edges, algorithm):
    try:
        return min_cut(edges, algorithm)
    except PlanningError:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edge_lists())
def test_csgraph_matches_brute_force_and_augmenting_paths(edges):
    value, smallest = brute_force(edges)
    result = solve(edges, "csgraph")
    if value is None:
        assert result is None
        return
    # The smallest optimal source side is unique: the intersection of the optimal ones is optimal too.
    assert result == (value, smallest)
    assert solve(edges, "augmenting_path") == (value, smallest)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edge_lists(parallel=False))
def test_csgraph_value_matches_networkx(edges):
    # networkx's DiGraph keeps the last of parallel edges, so these graphs have none.
    expected = solve(edges, "preflow_push")
    result = solve(edges, "csgraph")
    assert (result is None) == (expected is None)
    if result is not None:
        assert result[0] == expected[0]


def test_capacities_past_int64_fall_back_to_augmenting_paths():
    huge = 1 << 70
    edges = [(SOURCE, 0, huge), (0, 1, huge + 3), (1, SINK, huge + 1), (0, SINK, 5), (SOURCE, 1, None)]
    with pytest.raises(OverflowError):
        csgraph_min_cut(edges, SOURCE, SINK)
    assert min_cut(edges, "csgraph") == min_cut(edges, "augmenting_path") == (huge + 6, {SOURCE, 0, 1})


def test_an_infinite_path_is_infeasible():
    with pytest.raises(PlanningError, match="pins"):
        min_cut([(SOURCE, 0, None), (0, SINK, None), (SOURCE, SINK, 3)], "csgraph")


def test_engines_are_selectable():
    assert default_algorithm() == "csgraph"
    with use_algorithm("preflow_push"):
        assert default_algorithm() == "preflow_push"
    assert default_algorithm() == "csgraph"
    with pytest.raises(ValueError, match="unknown"):
        min_cut([], "simplex")
    with pytest.raises(ValueError, match="unknown"), use_algorithm("simplex"):
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_profiles())
def test_every_engine_plans_the_optimum(case):
    profile, pin_device, pin_server = case
    if pins_conflict(profile, pin_device, pin_server):
        return
    optimum = exhaustive(profile, pin_device, pin_server).predicted_step_s
    for algorithm in ALGORITHMS:
        with use_algorithm(algorithm):
            for method in ("full", "blockwise"):
                result = plan(profile, method, pin_device, pin_server)
                assert result.predicted_step_s <= optimum * (1 + TOL) + 1e-15


@pytest.mark.parametrize("nodes", [300, 1200])
def test_engines_agree_on_residual_stacks(nodes):
    profile = residual_stack(nodes, seed=3, link=Link.from_mbps(20.0, 80.0, rtt_ms=2.0))
    plans = {}
    for algorithm in ALGORITHMS:
        with use_algorithm(algorithm):
            plans[algorithm] = [plan(profile, method) for method in ("full", "blockwise")]
    values = [p.predicted_step_s for results in plans.values() for p in results]
    assert max(values) <= min(values) * (1 + TOL)
    assert plans["csgraph"][0].device == plans["augmenting_path"][0].device
