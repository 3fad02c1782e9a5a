"""benchmarks/traces.py, its planning part on a tiny setting: the table's invariants (no torch, no timing verdicts)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))  # traces.py imports its sibling _common
_spec = importlib.util.spec_from_file_location("benchmarks_traces", ROOT / "benchmarks" / "traces.py")
traces = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = traces  # dataclasses look their module up
_spec.loader.exec_module(traces)
from _common import residual_stack  # noqa: E402

TOL = 1e-9


@pytest.fixture(scope="module", params=[trace.name for trace in traces.TRACES])
def setting(request):
    trace = next(t for t in traces.TRACES if t.name == request.param)
    plain = residual_stack(48, seed=1)
    # Parameters to migrate: as many bytes as the node's output.
    nodes = [dataclasses.replace(n, param_bytes=0 if n.kind == "input" else n.out_bytes) for n in plain.nodes]
    profile = dataclasses.replace(plain, nodes=nodes)
    links = trace.links(40, seed=3)
    rules = traces.strategies(profile, (1, 5))
    return profile, links, rules


def test_the_trace_is_seeded_and_walks_its_states():
    trace = traces.TRACES[0]
    assert trace.links(40, 3) == trace.links(40, 3)
    assert all(link in {traces.Link.from_mbps(*state) for state in trace.states} for link in trace.links(200, 0))


def test_free_totals_are_bounded_by_the_per_step_optimum(setting):
    """Free of planning and migration costs, no strategy that plans as the library does beats the per-step optimum.

    (The layer-wise, DADS-style and server-only baselines may send the raw input, which the
    optimal plans do not, so they are not bounded by it.)
    """
    profile, links, rules = setting
    free = {rule.name: traces.replay(profile, links, rule, free=True)["total_s"] for rule in rules}
    oracle = free["oracle"]
    planned = [name for name in free if name.startswith("replan") or name in ("fixed", "device only")]
    assert len(planned) == 6 and all(free[name] >= oracle * (1 - TOL) for name in planned)
    assert free["replan/1"] == pytest.approx(oracle, rel=TOL)
    assert free["replan/1"] <= free["fixed"] * (1 + TOL)


def test_rows_add_up_and_costs_only_add(setting):
    profile, links, rules = setting
    rows = traces.evaluate(profile, links, (1, 5))
    assert [row["strategy"] for row in rows] == [rule.name for rule in rules]
    fixed = next(row for row in rows if row["strategy"] == "fixed")
    for rule, row in zip(rules, rows):
        assert row["total_s"] == pytest.approx(row["step_s"] + row["planning_s"] + row["migration_s"], rel=TOL)
        assert row["total_s"] >= traces.replay(profile, links, rule, free=True)["total_s"] * (1 - TOL)
        assert row["moves"] <= row["replans"] <= len(links)
        assert row["vs_fixed"] == pytest.approx(1 - row["total_s"] / fixed["total_s"], rel=TOL, abs=1e-12)
        if rule.every is None:
            assert row["replans"] == row["moves"] == 0 and row["planning_s"] == row["migration_s"] == 0
    aware = {row["strategy"]: row for row in rows if row["strategy"].endswith("aware")}
    assert all(
        row["moves"] <= next(r for r in rows if r["strategy"] == name[:-6])["moves"] for name, row in aware.items()
    )
    assert "strategy" in traces.table(rows).splitlines()[0]
