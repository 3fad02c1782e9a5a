"""Side-node clusters: the one-side shortcut of cluster_values against enumeration and the min cut."""

from hypothesis import HealthCheck, given, settings

from lightning_split.planning import clusters
from lightning_split.planning.cutgraph import CostGraph, resolve_pins
from tests.planning.test_planner import dag_profiles, pins_conflict, residual_stack, side_structure


def values(placement):
    return None if placement is None else placement[0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_profiles())
def test_cluster_values_match_enumeration_and_min_cut(case):
    """Each cluster's two values, shortcut or not, are those of trying every placement and of the min cut."""
    profile, pin_device, pin_server = case
    if pins_conflict(profile, pin_device, pin_server):
        return
    costs = CostGraph(profile)
    on_device, on_server = resolve_pins(costs, pin_device, pin_server)
    must_device = costs.with_inputs(on_device)
    core = clusters.core_mask(costs)
    for cluster in clusters.find_clusters(costs, core):
        found = clusters.cluster_values(costs, cluster, must_device, on_server)
        for core_on_device, placement in zip((True, False), found):
            expected = clusters._Enumeration(costs, cluster).best(core_on_device, must_device, on_server)
            cut = clusters._cut(costs, cluster, core_on_device, must_device, on_server)
            assert values(placement) == values(expected) == values(cut)
            shortcut = clusters._all_on_one_side(costs, cluster, core_on_device, must_device, on_server)
            if shortcut is not None:
                assert shortcut[1] == (cluster.nodes if core_on_device else [])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_profiles())
def test_core_mask_matches_reachability(case):
    """core_mask (its no-search shortcut included) is the nodes reachable from an input that reach an output."""
    profile = case[0]
    _, core, _ = side_structure(profile)
    assert clusters.core_mask(CostGraph(profile)) == [name in core for name in profile.names]


def test_core_mask_shortcut_on_a_graph_without_side_nodes():
    """A residual stack has no side nodes: every node is core, by the shortcut."""
    profile = residual_stack(5)
    assert clusters.core_mask(CostGraph(profile)) == [True] * len(profile.nodes)
