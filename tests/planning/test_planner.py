import itertools
import math

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks._common import residual_stack as shared_residual_stack
from lightning_split.planning import clusters as cluster_module
from lightning_split.planning.cutgraph import CostGraph
from lightning_split.planning.planner import (
    METHODS,
    Breakdown,
    Plan,
    PlanningError,
    baselines,
    best_layerwise,
    boundaries,
    device_only,
    exhaustive,
    is_feasible,
    plan,
    series_boundaries,
    server_only,
    step_time,
)
from lightning_split.planning.profile import Link, NodeCost, Profile, chain_profile
from lightning_split.planning.ranges import is_chain, solve_range

TOL = 1e-9


def op(name, inputs, out_bytes, device_s, server_s):
    return NodeCost(name, "op", tuple(inputs), out_bytes, device_s, server_s)


def residual_stack(blocks: int, seed: int = 0, link: Link | None = None, side_nodes: bool = False) -> Profile:
    """The benchmark's residual stack with ``blocks`` blocks (10 nodes each, 15 with side nodes) and no padding."""
    size = 15 if side_nodes else 10
    return shared_residual_stack(8 + size * blocks, seed, link or Link.from_mbps(100.0, 500.0, rtt_ms=4.0), side_nodes)


@st.composite
def dag_profiles(draw):
    """Random DAG profiles with branches, joins, shared tensors, several inputs/outputs and random pins.

    Half are free-form DAGs (edges to any earlier node); half are series of small blocks with
    skip edges, which have many boundaries and exercise every case of the blockwise method.
    Both get side nodes in the middle of the graph, as ViT and Swin graphs have: dead ends
    (nodes, chains and branches that reach no output, hanging off any earlier nodes, some
    spanning several blocks), unused inputs, and constants (nodes without inputs) feeding
    later nodes. Live nodes never consume a dead end, and no dead end is an output.
    """
    seconds = st.one_of(st.just(0.0), st.sampled_from([0.25, 1.0, 3.0]), st.floats(0.0, 4.0, allow_nan=False))
    sizes = st.one_of(st.just(0), st.sampled_from([1, 10, 100, 1000]), st.integers(0, 2000))
    nodes = []
    dead: set[str] = set()

    def add(inputs, kind="op", dead_end=False):
        name = f"in{len(nodes)}" if kind == "input" else f"op{len(nodes)}"
        nodes.append(NodeCost(name, kind, tuple(inputs), draw(sizes), draw(seconds), draw(seconds)))
        if dead_end:
            dead.add(name)
        return name

    def hang_dead_ends():
        for _ in range(draw(st.integers(0, 2))):
            if len(nodes) >= 18:
                return
            earlier = [node.name for node in nodes]
            sources = draw(st.lists(st.sampled_from(earlier), min_size=0, max_size=2, unique=True)) if earlier else []
            if sources and draw(st.booleans()):
                sources = [earlier[-1], *sources[1:]]  # off the most recent node, often a block's end
            add(sources, "input" if not sources and draw(st.booleans()) else "op", dead_end=True)

    inputs = [add((), "input") for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3])))]
    budget = len(nodes) + draw(st.integers(2, 14))
    if draw(st.booleans()):
        entry = inputs[0] if len(inputs) == 1 and draw(st.booleans()) else add(inputs)
        constants: list[str] = []  # may feed this block, its end and later blocks
        while len(nodes) < budget:
            constants += [add(()) for _ in range(draw(st.integers(0, 1)))]
            block: list[str] = []
            consumed: set[str] = set()
            for _ in range(draw(st.integers(0, max(0, min(3, budget - len(nodes) - 1))))):
                sources = draw(st.lists(st.sampled_from([entry, *constants[-2:], *block]), min_size=1, max_size=2))
                consumed.update(sources)
                block.append(add(sources))
            ends = [name for name in block if name not in consumed] or [entry]
            if block and draw(st.booleans()):
                ends.append(entry)
            if constants and draw(st.booleans()):
                ends.append(draw(st.sampled_from(constants)))
            entry = add(list(dict.fromkeys(ends)))
            hang_dead_ends()
    else:
        while len(nodes) < budget:
            if draw(st.integers(0, 3)) == 3:
                hang_dead_ends()
            earlier = [node.name for node in nodes if node.name not in dead]
            sources = draw(st.lists(st.sampled_from(earlier), min_size=0, max_size=3)) if earlier else []
            if earlier and draw(st.booleans()):
                sources = [earlier[-1], *sources]  # chains and series structure
            add(sources)
    names = [node.name for node in nodes]
    live = [name for name in names if name not in dead] or names
    outputs = draw(st.lists(st.sampled_from(live), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()) and live[-1] not in outputs:
        outputs.append(live[-1])
    rates = st.sampled_from([1.0, 10.0, 100.0, 1000.0, math.inf])
    link = Link(draw(rates), draw(rates), draw(st.sampled_from([0.0, 0.01, 0.5, 3.0, 20.0])))
    pin_device = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
    pin_server = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
    return Profile(nodes, outputs, link), pin_device, pin_server


def pins_conflict(profile, pin_device, pin_server) -> bool:
    graph = nx.DiGraph()
    graph.add_nodes_from(profile.names)
    graph.add_edges_from((source, node.name) for node in profile.nodes for source in node.inputs)
    must_device = set(pin_device) | {node.name for node in profile.nodes if node.kind == "input"}
    for name in pin_device:
        must_device |= nx.ancestors(graph, name)
    return bool(must_device & set(pin_server))


def check_plan(profile, result: Plan, pin_device=(), pin_server=()):
    assert set(result.device).isdisjoint(result.server)
    assert sorted(result.device + result.server, key=profile.names.index) == profile.names
    assert list(result.device) == [name for name in profile.names if name in result.device]
    assert is_feasible(profile, result.device)
    assert set(pin_device) <= set(result.device)
    assert set(pin_server) <= set(result.server)
    breakdown = step_time(profile, result.device)
    assert breakdown == result.breakdown
    assert breakdown.total == result.predicted_step_s
    server = set(result.server)
    expected_cut = [
        name for name in result.device if any(name in node.inputs for node in profile.nodes if node.name in server)
    ]
    assert list(result.cut) == expected_cut
    assert result.solve_s >= 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_profiles())
def test_exact_methods_match_exhaustive(case):
    profile, pin_device, pin_server = case
    if pins_conflict(profile, pin_device, pin_server):
        for method in ("full", "blockwise", "exhaustive"):
            with pytest.raises(PlanningError, match="pinned"):
                plan(profile, method, pin_device, pin_server)
        return
    oracle = exhaustive(profile, pin_device, pin_server)
    check_plan(profile, oracle, pin_device, pin_server)
    for method in ("full", "blockwise"):
        result = plan(profile, method, pin_device, pin_server)
        assert result.method == method
        check_plan(profile, result, pin_device, pin_server)
        assert result.predicted_step_s == pytest.approx(oracle.predicted_step_s, abs=TOL)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_profiles())
def test_blockwise_with_min_cut_clusters_matches_exhaustive(case):
    # Clusters of side nodes are small here, so they are enumerated; force their min cut instead.
    profile, pin_device, pin_server = case
    if pins_conflict(profile, pin_device, pin_server):
        return
    oracle = exhaustive(profile, pin_device, pin_server)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cluster_module, "_TINY_CLUSTER", 0)
        result = plan(profile, "blockwise", pin_device, pin_server)
    check_plan(profile, result, pin_device, pin_server)
    assert result.predicted_step_s == pytest.approx(oracle.predicted_step_s, abs=TOL)


def side_structure(profile):
    """Core nodes (reachable from an input, reaching an output) and clusters of the others, by networkx."""
    graph = nx.DiGraph()
    graph.add_nodes_from(profile.names)
    graph.add_edges_from((source, node.name) for node in profile.nodes for source in node.inputs)
    from_input = set().union(*(nx.descendants(graph, n.name) | {n.name} for n in profile.nodes if n.kind == "input"))
    to_output = set().union(*(nx.ancestors(graph, name) | {name} for name in profile.outputs))
    core = from_input & to_output
    links = nx.Graph()
    links.add_nodes_from(name for name in profile.names if name not in core)
    links.add_edges_from((u, w) for u, w in graph.edges if u not in core and w not in core)
    for u in core:
        side = [w for w in graph.successors(u) if w not in core]
        links.add_edges_from(itertools.pairwise(side))
    clusters = []
    for members in nx.connected_components(links):
        consumed = {u for w in members for u in graph.predecessors(w) if u in core}
        fed = {w for u in members for w in graph.successors(u) if w in core}
        clusters.append((consumed, fed))
    return graph, core, clusters


@settings(max_examples=150, deadline=None)
@given(dag_profiles())
def test_series_boundaries_match_definition(case):
    # A boundary of the core graph is usable iff each cluster of side nodes fits between two
    # usable boundaries: the core nodes it consumes at or after the lower one and before the
    # upper one, those it feeds after the lower one and at or before the upper one.
    profile = case[0]
    graph, core, clusters = side_structure(profile)
    order = [name for name in profile.names if name in core]
    index = {name: i for i, name in enumerate(order)}
    sub = graph.subgraph(core)
    core_bounds = []
    for b in order:
        before, after = nx.ancestors(sub, b), nx.descendants(sub, b)
        if len(before) + len(after) + 1 == len(order) and not any(u in before and w in after for u, w in sub.edges):
            core_bounds.append(b)

    def blocked(b, consumed, fed):
        p = index[b]
        touched = [index[v] for v in consumed | fed]
        if not touched:
            return False
        lower, upper = min(touched), max(touched)
        return (
            lower < p < upper
            or (b in consumed and lower < p)
            or (b in fed and p < upper)
            or (b in consumed and b in fed)
        )

    expected = [b for b in core_bounds if not any(blocked(b, *cluster) for cluster in clusters)]
    assert series_boundaries(profile) == expected
    if core == set(profile.names):
        assert expected == boundaries(profile)


def test_side_nodes_keep_the_blocks_of_a_residual_stack():
    # Dead ends and constants inside every block (as in ViT and Swin graphs) make almost no node
    # a boundary of the whole graph, but the core graph still splits at every block.
    plain, side = residual_stack(30), residual_stack(30, side_nodes=True)
    assert len(boundaries(side)) < 5
    assert series_boundaries(side) == boundaries(plain)
    for uplink_mbps in (5.0, 100.0):
        profile = side.with_link(Link.from_mbps(uplink_mbps, 5 * uplink_mbps, rtt_ms=4.0))
        full, blockwise = plan(profile, "full"), plan(profile, "blockwise")
        check_plan(profile, blockwise)
        assert blockwise.predicted_step_s == pytest.approx(full.predicted_step_s, abs=TOL)
        assert {"b3_assert", "b3_eq", "b3_dim", "b3_unused", "b3_bias"} <= set(blockwise.device + blockwise.server)


def test_a_heavy_dead_end_goes_to_the_server_and_pays_its_input():
    # d reaches no output, yet its compute counts: on the server it costs 0.1 s plus a's 100 bytes
    # up and down (2 s), on the device 10 s. Nothing else wants the server (rtt 0).
    nodes = [
        NodeCost("x", "input", (), 1000, 0.0, 0.0),
        op("a", ["x"], 100, 1.0, 1.0),
        op("d", ["a"], 1, 10.0, 0.1),
        op("b", ["a"], 1, 1.0, 1.0),
        op("c", ["b"], 1, 1.0, 1.0),
    ]
    profile = Profile(nodes, ["c"], Link(100.0, 100.0))
    assert series_boundaries(profile) == ["x", "a", "b", "c"]
    for method in ("full", "blockwise", "exhaustive"):
        result = plan(profile, method)
        assert result.server == ("d",)
        assert result.cut == ("a",)
        assert result.predicted_step_s == pytest.approx(3.0 + 0.1 + 2.0)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_traced_vit_and_swin_graphs_decompose(family):
    # Small torchvision transformers traced for real: ViT has _assert chains and unused attention
    # weights, Swin constant relative-position biases; blockwise splits them and stays exact.
    import torch
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    from lightning_split.costs.estimate import estimate_profile
    from lightning_split.graph.capture import trace_module

    torch.manual_seed(0)
    if family == "vit":
        model = VisionTransformer(32, 8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)
        example = torch.randn(2, 3, 32, 32)
    else:
        model = SwinTransformer([4, 4], 8, [2, 2], [1, 2], [2, 2], num_classes=10)
        example = torch.randn(2, 3, 32, 32)
    profile = estimate_profile(trace_module(model, (example,)), Link.from_mbps(20.0, rtt_ms=2.0))
    _, core, _ = side_structure(profile)
    assert len(core) < len(profile.nodes)
    assert len(series_boundaries(profile)) > 2 * len(boundaries(profile))
    for mbps in (1.0, 20.0, 1000.0):
        linked = profile.with_link(Link.from_mbps(mbps, rtt_ms=2.0))
        full, blockwise = plan(linked, "full"), plan(linked, "blockwise")
        check_plan(linked, blockwise)
        assert blockwise.predicted_step_s == pytest.approx(full.predicted_step_s, abs=TOL)


def test_exhaustive_stops_at_its_placement_budget():
    profile = chain_profile([1.0] * 6, [1.0] * 6, [1] * 6, Link(1.0, 1.0))  # 7 feasible placements
    assert exhaustive(profile, max_placements=7).predicted_step_s == plan(profile).predicted_step_s
    with pytest.raises(PlanningError, match="stopped after 6 placements"):
        exhaustive(profile, max_placements=6)


@settings(max_examples=150, deadline=None)
@given(dag_profiles())
def test_boundaries_match_definition(case):
    profile = case[0]
    graph = nx.DiGraph()
    graph.add_nodes_from(profile.names)
    graph.add_edges_from((source, node.name) for node in profile.nodes for source in node.inputs)
    expected = []
    for b in profile.names:
        before, after = nx.ancestors(graph, b), nx.descendants(graph, b)
        if len(before) + len(after) + 1 == len(profile.names) and not any(
            u in before and w in after for u, w in graph.edges
        ):
            expected.append(b)
    assert boundaries(profile) == expected


@settings(max_examples=150, deadline=None)
@given(dag_profiles())
def test_baselines_match_spec_definitions(case):
    profile = case[0]
    names = profile.names
    assert device_only(profile).device == tuple(names)
    assert server_only(profile).device == tuple(n.name for n in profile.nodes if n.kind == "input")
    last_input = max((i for i, node in enumerate(profile.nodes) if node.kind == "input"), default=-1)
    best = min(step_time(profile, names[:k]).total for k in range(last_input + 1, len(names) + 1))
    layerwise = best_layerwise(profile)
    assert layerwise.predicted_step_s == pytest.approx(best, abs=TOL)
    assert layerwise.device == tuple(names[: len(layerwise.device)])
    assert baselines(profile) == {
        "device_only": step_time(profile, names).total,
        "server_only": server_only(profile).predicted_step_s,
        "best_layerwise": layerwise.predicted_step_s,
    }
    assert exhaustive(profile).predicted_step_s <= min(baselines(profile).values()) + TOL


def test_chain_best_cut_in_the_middle():
    # Round trip of one byte: 1/100 + 1/100 = 0.02 s. x->n0->n1->n2->n3, output n3 (10 bytes: 0.2 s back).
    profile = chain_profile([1, 1, 10, 10], [0.1] * 4, [1000, 10, 1000, 10], Link(100.0, 100.0), input_bytes=10_000)
    # D={x}: 200+0.4+0.2; {x,n0}: 1+20+0.3+0.2; {x,n0,n1}: 2+0.2+0.2+0.2 = 2.6; {..,n2}: 12+20+0.1+0.2; all: 22.
    for method in ("full", "blockwise", "exhaustive"):
        result = plan(profile, method)
        assert result.device == ("x", "n0", "n1")
        assert result.server == ("n2", "n3")
        assert result.cut == ("n1",)
        assert result.predicted_step_s == pytest.approx(2.6)
        assert result.breakdown == pytest.approx(Breakdown(2.0, 0.2, 0.2, 0.2, 0.0))


def test_a_tensor_crossing_the_cut_pays_its_round_trip():
    # Cutting after n0 would be free but for n0's 1000 bytes (20 s there and back): all-device (5 s) wins.
    profile = chain_profile([0.0, 5.0], [0.0, 0.0], [1000, 0], Link(100.0, 100.0), input_bytes=1000)
    assert step_time(profile, ["x", "n0"]).total == pytest.approx(20.0)
    for method in ("full", "blockwise", "exhaustive"):
        assert plan(profile, method).predicted_step_s == 5.0


def test_tensor_with_two_server_consumers_is_sent_once():
    nodes = [
        NodeCost("x", "input", (), 1000, 0.0, 0.0),
        op("a", ["x"], 100, 1.0, 1.0),
        op("b", ["a"], 1, 10.0, 1.0),
        op("c", ["a"], 1, 10.0, 1.0),
        op("d", ["b", "c"], 1, 10.0, 1.0),
    ]
    profile = Profile(nodes, ["d"], Link(100.0, 100.0))
    for method in ("full", "blockwise", "exhaustive"):
        result = plan(profile, method)
        assert result.device == ("x", "a")
        assert result.cut == ("a",)
        # a's 100 bytes go up once (1 s) and its gradient comes down once (1 s); d's 1 byte returns.
        assert result.breakdown == pytest.approx(Breakdown(1.0, 3.0, 1.01, 1.01, 0.0))
        assert result.predicted_step_s == pytest.approx(6.02)


def test_model_output_on_the_server_pays_its_return_trip():
    profile = chain_profile([1.0], [0.0], [1000], Link(100.0, 100.0), input_bytes=10)
    assert step_time(profile, ["x"]) == pytest.approx(Breakdown(0.0, 0.0, 10.1, 10.1, 0.0))
    assert step_time(profile, ["x", "n0"]) == Breakdown(1.0, 0.0, 0.0, 0.0, 0.0)
    for method in ("full", "blockwise"):
        assert plan(profile, method).device == ("x", "n0")


def test_large_rtt_makes_all_device_win():
    fast_server = chain_profile([1.0, 1.0], [0.01, 0.01], [10, 10], Link(1e6, 1e6, rtt_s=0.0))
    assert plan(fast_server).device == ("x",)
    slow_network = fast_server.with_link(Link(1e6, 1e6, rtt_s=2.0))
    assert step_time(slow_network, ["x"]).rtt_s == 4.0
    for method in ("full", "blockwise", "exhaustive"):
        result = plan(slow_network, method)
        assert result.device == ("x", "n0", "n1")
        assert result.breakdown.rtt_s == 0.0
        assert result.predicted_step_s == pytest.approx(2.0)


def test_rtt_is_paid_once_when_a_pin_forces_the_server():
    profile = chain_profile([0.1, 1.0], [0.5, 0.5], [10, 10], Link(1e6, 1e6, rtt_s=2.0))
    for method in ("full", "blockwise", "exhaustive"):
        result = plan(profile, method, pin_server=["n1"])
        assert result.device == ("x", "n0")
        assert result.breakdown.rtt_s == 4.0


def test_best_layerwise_is_strictly_worse_when_the_order_interleaves_branches():
    nodes = [
        NodeCost("x", "input", (), 1000, 0.0, 0.0),
        op("a1", ["x"], 10, 0.1, 0.1),
        op("b1", ["x"], 1000, 0.1, 0.1),
        op("a2", ["a1"], 10, 10.0, 1.0),
        op("b2", ["b1"], 10, 0.1, 0.1),
        op("j", ["a2", "b2"], 1, 0.0, 0.0),
    ]
    profile = Profile(nodes, ["j"], Link(100.0, 100.0))
    layerwise = best_layerwise(profile)
    assert layerwise.predicted_step_s == pytest.approx(10.3)
    for method in ("full", "blockwise", "exhaustive"):
        result = plan(profile, method)
        assert result.device == ("x", "a1", "b1", "b2")
        assert result.cut == ("a1", "b2")
        assert result.predicted_step_s == pytest.approx(0.3 + 0.2 + 0.2 + 1.0 + 0.02)
        assert result.predicted_step_s < layerwise.predicted_step_s - 1


def test_boundaries_of_a_residual_stack():
    profile = residual_stack(3)
    expected = ["x", "conv1", "bn1", "relu", "maxpool"]
    expected += [name for b in range(3) for name in (f"b{b}_add", f"b{b}_relu")] + ["avgpool", "flatten", "fc"]
    assert boundaries(profile) == expected
    assert series_boundaries(profile) == expected  # every node is core: the same points
    several_inputs = Profile(
        [NodeCost("x", "input", (), 1, 0, 0), NodeCost("y", "input", (), 1, 0, 0), op("f", ["x", "y"], 1, 1, 1)],
        ["f"],
        Link(1.0, 1.0),
    )
    assert boundaries(several_inputs) == ["f"]
    two_outputs = Profile(
        [NodeCost("x", "input", (), 1, 0, 0), op("f", ["x"], 1, 1, 1), op("g", ["f"], 1, 1, 1)],
        ["f", "g"],
        Link(1.0, 1.0),
    )
    assert boundaries(two_outputs) == ["x", "f", "g"]


@pytest.mark.parametrize(("uplink_mbps", "rtt_ms"), [(100.0, 4.0), (20.0, 0.0), (5.0, 4.0), (1.0, 500.0)])
def test_blockwise_equals_full_on_a_large_residual_stack(uplink_mbps, rtt_ms):
    profile = residual_stack(250, seed=int(uplink_mbps), link=Link.from_mbps(uplink_mbps, 5 * uplink_mbps, rtt_ms))
    assert len(profile.nodes) == 2508
    full = plan(profile, "full")
    blockwise = plan(profile, "blockwise")
    assert blockwise.predicted_step_s == pytest.approx(full.predicted_step_s, abs=TOL)
    assert blockwise.predicted_step_s <= min(baselines(profile).values()) + TOL
    assert is_feasible(profile, blockwise.device)


def test_pins_on_a_residual_stack_restrict_the_segments():
    profile = residual_stack(20, seed=3)
    pins = {"pin_device": ["b7_conv2"], "pin_server": ["b12_relu1"]}
    full = plan(profile, "full", **pins)
    blockwise = plan(profile, "blockwise", **pins)
    check_plan(profile, blockwise, **pins)
    assert blockwise.predicted_step_s == pytest.approx(full.predicted_step_s, abs=TOL)


def test_conflicting_pins_name_the_nodes():
    profile = chain_profile([1, 1, 1], [1, 1, 1], [1, 1, 1], Link(1.0, 1.0))
    cases = [
        ({"pin_device": ["n1"], "pin_server": ["n1"]}, "n1 is pinned to both the device and the server"),
        ({"pin_server": ["x"]}, "x is a model input"),
        ({"pin_device": ["n1"], "pin_server": ["n0"]}, "n0 is pinned to the server but its consumer n1 is pinned"),
        ({"pin_device": ["n2"], "pin_server": ["n0"]}, r"n0 is pinned to the server but its descendant n2 \(n0 -> n1"),
        ({"pin_device": ["conv9"]}, "not in the profile: conv9"),
    ]
    for pins, message in cases:
        for method in ("full", "blockwise", "exhaustive"):
            with pytest.raises(PlanningError, match=message):
                plan(profile, method, **pins)
    bare = plan(profile, pin_server="n1")  # a bare string is one name, not "n" and "1"
    assert bare.server[-2:] == ("n1", "n2")
    assert bare.device == plan(profile, pin_server=["n1"]).device


def test_plan_rejects_unknown_methods_and_pinned_baselines():
    profile = chain_profile([1], [1], [1], Link(1.0, 1.0))
    with pytest.raises(PlanningError, match="unknown planning method"):
        plan(profile, "greedy")
    with pytest.raises(PlanningError, match="pins apply"):
        plan(profile, "device_only", pin_device=["n0"])
    with pytest.raises(PlanningError, match="limited to 1 nodes"):
        exhaustive(profile, max_nodes=1)
    for method in METHODS:
        assert plan(profile, method).method == method


def test_step_time_and_feasibility_reject_unknown_names():
    profile = chain_profile([1], [1], [1], Link(1.0, 1.0))
    assert is_feasible(profile, ["x"])
    assert not is_feasible(profile, ["n0"])
    with pytest.raises(PlanningError, match="unknown node"):
        step_time(profile, ["x", "nope"])


def test_constant_ops_may_run_on_either_side():
    nodes = [
        NodeCost("x", "input", (), 0, 0.0, 0.0),
        op("const", [], 10, 5.0, 0.0),
        op("f", ["x", "const"], 1, 5.0, 0.0),
    ]
    profile = Profile(nodes, ["f"], Link(100.0, 100.0))
    assert server_only(profile).device == ("x",)
    for method in ("full", "blockwise", "exhaustive"):
        assert plan(profile, method).device == ("x",)


def test_a_model_without_inputs_may_run_entirely_on_the_server():
    nodes = [op("c1", [], 1000, 10.0, 0.0), op("c2", [], 1000, 10.0, 0.0), op("f", ["c1", "c2"], 0, 10.0, 0.0)]
    profile = Profile(nodes, ["f"], Link(50.0, 50.0))
    assert boundaries(profile) == ["f"]
    for method in ("full", "blockwise", "exhaustive"):
        result = plan(profile, method)
        assert result.device == ()
        assert result.predicted_step_s == 0.0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 50)), min_size=1, max_size=8),
    st.data(),
)
def test_chain_scan_matches_min_cut(costs, data):
    # Between adjacent boundaries chain ranges are short, so check the scan on long chains directly.
    profile = chain_profile(*zip(*costs), Link(10.0, 5.0, data.draw(st.sampled_from([0.0, 1.0]))), input_bytes=7)
    graph = CostGraph(profile)
    lo = data.draw(st.integers(0, graph.n - 1))
    hi = data.draw(st.integers(lo, graph.n - 1))
    on_device = set(data.draw(st.lists(st.integers(lo, hi), max_size=1)))
    on_server = {v for v in data.draw(st.lists(st.integers(lo, hi), max_size=1)) if v > max(on_device, default=-1)}
    if lo == 0:
        on_device.add(0)
        on_server.discard(0)
    elsewhere = hi < graph.n - 1 or data.draw(st.booleans())
    if hi < graph.n - 1:
        on_server.add(hi)  # the range's last node feeds the rest: as in blockwise, it is pinned to the server
        on_device.discard(hi)
    assert is_chain(graph, lo, hi)
    scan = solve_range(graph, lo, hi, on_device, on_server, elsewhere, True)
    cut = solve_range(graph, lo, hi, on_device, on_server, elsewhere, False)
    assert scan[0] == cut[0]


def test_empty_profile():
    profile = Profile([], [], Link(1.0, 1.0))
    for method in METHODS:
        result = plan(profile, method)
        assert result.device == result.server == ()
        assert result.predicted_step_s == 0.0


def test_plan_json_has_exactly_the_spec_keys():
    profile = residual_stack(2)
    result = plan(profile)
    data = result.to_json(baselines(profile))
    assert list(data) == [
        "method",
        "device",
        "server",
        "cut",
        "predicted_step_s",
        "breakdown",
        "baselines",
        "solve_s",
    ]
    assert list(data["breakdown"]) == ["device_s", "server_s", "upload_s", "download_s", "rtt_s"]
    assert set(data["baselines"]) == {"device_only", "server_only", "best_layerwise"}
    assert data["device"] + data["server"] == profile.names
    assert data["predicted_step_s"] == result.predicted_step_s
    assert "baselines" not in result.to_json()
