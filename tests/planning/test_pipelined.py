"""The pipelined planner against brute force over every subset of nodes, written plainly here."""

import dataclasses
import itertools
import math
import random
import time

import pytest

from benchmarks._common import parallel_branches, residual_stack
from lightning_split.planning import planner
from lightning_split.planning.constraints import (
    can_check_private_inputs,
    device_footprint,
    private_input_violations,
    raw_nodes,
)
from lightning_split.planning.enumeration import boundary_positions
from lightning_split.planning.pipelined import CODEC_RATIOS, Objective, StageCosts, pipe_m, pipelined_step_time
from lightning_split.planning.pipelined_planner import best_micro_batches, plan_pipelined, sequential_optimum
from lightning_split.planning.planner import PlanningError
from lightning_split.planning.profile import Link, NodeCost, Profile

# ----------------------------------------------------------------------------------------------
# Random profiles and the plain oracle.


def random_profile(seed: int, nodes: int | None = None) -> Profile:
    """A DAG of 6-12 nodes: one or two inputs, constants, joins, skips, dead ends, several outputs."""
    rng = random.Random(seed)
    size = nodes or rng.randint(6, 12)
    result = [
        NodeCost(
            f"in{i}", "input", (), rng.randint(0, 3000), 0.0, 0.0, param_bytes=0, device_mem_bytes=rng.randint(0, 50)
        )
        for i in range(rng.choice([1, 1, 1, 2]))
    ]
    while len(result) < size:
        names = [node.name for node in result]
        if rng.random() < 0.1:
            sources: tuple[str, ...] = ()  # a constant
        else:
            picked = set(rng.sample(names, rng.randint(1, min(3, len(names)))))
            if rng.random() < 0.6:
                picked.add(names[-1])  # chains and blocks
            sources = tuple(sorted(picked, key=names.index))
        device_s, server_s = rng.choice([0.0, rng.uniform(0, 4)]), rng.choice([0.0, rng.uniform(0, 4)])
        result.append(
            NodeCost(
                f"op{len(result)}",
                "op",
                sources,
                rng.choice([0, rng.randint(1, 3000)]),
                device_s,
                server_s,
                param_bytes=rng.choice([0, 0, 64, 4096]),
                device_mem_bytes=rng.randint(0, 400),
                device_fwd_s=rng.uniform(0, device_s) if rng.random() < 0.3 else None,
                server_fwd_s=rng.uniform(0, server_s) if rng.random() < 0.3 else None,
                device_fixed_s=rng.uniform(0, device_s) if rng.random() < 0.3 else None,
                server_fixed_s=rng.uniform(0, server_s) if rng.random() < 0.3 else None,
            )
        )
    names = [node.name for node in result]
    outputs = list(dict.fromkeys([names[-1], *rng.sample(names, rng.randint(0, 2))]))
    rate = lambda: rng.choice([100.0, 1000.0, 10000.0, math.inf])  # noqa: E731
    link = Link(rate(), rate(), rng.choice([0.0, 0.01, 0.5]), rng.choice([None, 0.0, 0.02, 0.3]))
    return Profile(result, outputs, link)


def forward_share(node, side):
    total, forward = (node.device_s, node.device_fwd_s) if side == "device" else (node.server_s, node.server_fwd_s)
    return total / 3 if forward is None else forward


def shares(node, side, m):
    """Forward and backward seconds of M micro-batches: each pays the fixed part and 1/M of the rest."""
    total = node.device_s if side == "device" else node.server_s
    fixed = (node.device_fixed_s if side == "device" else node.server_fixed_s) or 0.0
    forward = forward_share(node, side)
    fraction = forward / total if total else 1 / 3
    per_micro_batch = fixed + (total - fixed) / m
    return m * per_micro_batch * fraction, m * per_micro_batch * (1 - fraction)


def plain_time(profile, device, m, codec="none"):
    """SPEC 1b, term by term (with each node's fixed per-micro-batch part)."""
    rho = CODEC_RATIOS[codec]
    device = set(device)
    server = [node for node in profile.nodes if node.name not in device]
    if not server:
        return sum(node.device_s for node in profile.nodes)
    on_server = {node.name for node in server}
    on_device = [node for node in profile.nodes if node.name in device]
    crossing = {u for node in server for u in node.inputs if u in device}
    x = sum(profile.node(u).out_bytes for u in crossing)
    o = sum(profile.node(v).out_bytes for v in set(profile.outputs) & on_server)
    df = sum(shares(node, "device", m)[0] for node in on_device)
    db = sum(shares(node, "device", m)[1] for node in on_device)
    sf = sum(shares(node, "server", m)[0] for node in server)
    sb = sum(shares(node, "server", m)[1] for node in server)
    up, down, link = profile.link.uplink_bytes_per_s, profile.link.downlink_bytes_per_s, profile.link

    def pipe(*times):
        return sum(times) / m + (1 - 1 / m) * max(times)

    forward = pipe(df, rho * x / up, sf, rho * o / down)
    backward = pipe(rho * o / up, sb, rho * x / down, db)
    return forward + backward + 2 * link.rtt_s + 2 * m * (link.message_s or 0.0)


def plain_raw(profile):
    raw = {}
    for node in profile.nodes:
        raw[node.name] = not node.param_bytes and all(raw[u] for u in node.inputs)
    return raw


def satisfies(profile, device, private=False, budget=None, pin_device=(), pin_server=()):
    """Whether a set of device nodes is a feasible placement under the constraints, checked plainly."""
    if any(node.kind == "input" and node.name not in device for node in profile.nodes):
        return False
    if any(node.name in device and not set(node.inputs) <= device for node in profile.nodes):
        return False  # an edge from the server back to the device
    if not set(pin_device) <= device or device & set(pin_server):
        return False
    # SPEC 1c as written: no raw node (wherever it runs) has a consumer on the server.
    raw = plain_raw(profile)
    if private and any(raw[u] for node in profile.nodes if node.name not in device for u in node.inputs):
        return False
    return budget is None or sum(profile.node(v).device_mem_bytes or 0 for v in device) <= budget


def feasible_placements(profile, private=False, budget=None, pin_device=(), pin_server=()):
    """Every subset of nodes that is a feasible placement under the constraints, by brute force."""
    subsets = itertools.product((False, True), repeat=len(profile.names))
    devices = ({name for name, here in zip(profile.names, bits) if here} for bits in subsets)
    return [device for device in devices if satisfies(profile, device, private, budget, pin_device, pin_server)]


def brute_force(profile, m, codec="none", placements=None, **constraints):
    """The minimum of ``T_M`` over ``placements`` (default: every feasible placement)."""
    placements = feasible_placements(profile, **constraints) if placements is None else placements
    if not placements:
        return math.inf, None
    return min((plain_time(profile, device, m, codec), sorted(device)) for device in placements)


def footprint_range(profile, private):
    footprints = [device_footprint(profile, device) for device in feasible_placements(profile, private)]
    return min(footprints), max(footprints)


def assert_consistent(profile, result, private, budget, pin_device=(), pin_server=()):
    """The returned placement is feasible, and its reported figures are its own."""
    device = set(result.device)
    assert satisfies(profile, device, private, budget, pin_device, pin_server)
    assert sorted(device | set(result.server), key=profile.names.index) == profile.names
    assert result.predicted_step_s == pytest.approx(plain_time(profile, device, result.micro_batches, result.codec))
    assert result.predicted_step_s == pytest.approx(result.terms.total)
    crossing = [
        u
        for u in profile.names
        if u in device and any(u in node.inputs for node in profile.nodes if node.name not in device)
    ]
    assert list(result.cut) == crossing
    assert result.device_footprint == device_footprint(profile, device)
    assert result.gap == pytest.approx(result.predicted_step_s - result.lower_bound)


# ----------------------------------------------------------------------------------------------
# The cost model.


@pytest.mark.parametrize("seed", range(30))
def test_one_micro_batch_without_codec_is_the_sequential_step_time(seed):
    profile = random_profile(seed)
    profile = profile.with_link(Link(profile.link.uplink_bytes_per_s, profile.link.downlink_bytes_per_s, 0.2))
    rng = random.Random(seed)
    for _ in range(20):
        device = [name for name in profile.names if rng.random() < 0.5]  # feasible or not, as step_time
        assert pipelined_step_time(profile, device, 1).total == pytest.approx(planner.step_time(profile, device).total)


@pytest.mark.parametrize("seed", range(30))
def test_step_time_is_the_spec_formula(seed):
    profile, rng = random_profile(seed), random.Random(seed)
    for m, codec in itertools.product((1, 2, 3, 8), CODEC_RATIOS):
        device = [name for name in profile.names if rng.random() < 0.6]
        time_m = pipelined_step_time(profile, device, m, codec)
        assert time_m.total == pytest.approx(plain_time(profile, device, m, codec))
        assert time_m.forward_s == pytest.approx(pipe_m(time_m.forward_stages, m))
        assert time_m.total == pytest.approx(time_m.forward_s + time_m.backward_s + time_m.rtt_s + time_m.message_s)


def test_pipe_and_the_terms_of_a_chain():
    assert pipe_m([1.0, 2.0, 3.0], 1) == 6.0
    assert pipe_m([1.0, 2.0, 3.0], 4) == pytest.approx(6 / 4 + 0.75 * 3)
    profile = Profile(
        [
            NodeCost("x", "input", (), 0, 0.0, 0.0),
            NodeCost("a", "op", ("x",), 100, 3.0, 3.0, device_fwd_s=1.0),
            NodeCost("b", "op", ("a",), 50, 6.0, 1.5),
        ],
        ["b"],
        Link(100.0, 50.0, 0.25, message_s=0.5),
    )
    terms = pipelined_step_time(profile, ["x", "a"], 4, "fp16")
    assert terms.forward_stages == pytest.approx((1.0, 0.5, 0.5, 0.5))  # device, X up, server, O down
    assert terms.backward_stages == pytest.approx((0.25, 1.0, 1.0, 2.0))  # O up, server, X down, device
    assert (terms.rtt_s, terms.message_s) == (0.5, 4.0)
    everything = pipelined_step_time(profile, profile.names, 4, "int8")
    assert everything.total == 9.0 and everything.rtt_s == everything.message_s == 0.0
    assert set(terms.to_json()) >= {"forward_s", "backward_s", "total_s", "upload_fwd_s"}


def test_bad_codec_micro_batches_and_names_are_refused():
    profile = random_profile(0)
    with pytest.raises(PlanningError, match="unknown codec 'zip'; expected one of none, fp16, bf16, int8"):
        pipelined_step_time(profile, ["in0"], 2, "zip")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(PlanningError, match="micro_batches must be an integer >= 1"):
            plan_pipelined(profile, bad, private_inputs=False)
    with pytest.raises(PlanningError, match="unknown node"):
        pipelined_step_time(profile, ["nope"], 1)


# ----------------------------------------------------------------------------------------------
# Constraints.


def test_raw_nodes_and_private_input_violations():
    nodes = [
        NodeCost("x", "input", (), 10, 0.0, 0.0, param_bytes=0),
        NodeCost("crop", "op", ("x",), 8, 0.1, 0.1, param_bytes=0),
        NodeCost("conv", "op", ("crop",), 6, 1.0, 0.1, param_bytes=100),
        NodeCost("skip", "op", ("crop", "conv"), 6, 0.1, 0.1, param_bytes=0),
        NodeCost("fc", "op", ("skip",), 2, 1.0, 0.1, param_bytes=40),
    ]
    profile = Profile(nodes, ["fc"], Link(10.0, 10.0))
    assert raw_nodes(profile) == ["x", "crop"]
    assert private_input_violations(profile, ["x", "crop", "conv"]) == [("crop", "skip")]
    assert private_input_violations(profile, ["x", "crop", "conv", "skip"]) == []
    result = plan_pipelined(profile, 2)
    assert {"x", "crop", "conv", "skip"} <= set(result.device)
    assert can_check_private_inputs(profile)
    assert not can_check_private_inputs(Profile([NodeCost("x", "input", (), 1, 0.0, 0.0)], ["x"], Link(1.0, 1.0)))


def test_a_profile_without_param_bytes_cannot_be_planned_with_private_inputs():
    profile = Profile(
        [NodeCost("x", "input", (), 1, 0.0, 0.0), NodeCost("a", "op", ("x",), 1, 1.0, 0.0)], ["a"], Link(1e6, 1e6)
    )
    with pytest.raises(PlanningError, match="private inputs cannot be checked: no node of the profile has param_bytes"):
        plan_pipelined(profile)
    assert plan_pipelined(profile, private_inputs=False).server == ("a",)


def test_conflicts_name_the_constraint_and_the_nodes():
    nodes = [
        NodeCost("x", "input", (), 10, 0.0, 0.0, param_bytes=0),
        NodeCost("norm", "op", ("x",), 10, 0.1, 0.1, param_bytes=0),
        NodeCost("conv", "op", ("norm",), 6, 1.0, 0.1, param_bytes=100),
        NodeCost("fc", "op", ("conv",), 2, 1.0, 0.1, param_bytes=40),
    ]
    profile = Profile(nodes, ["fc"], Link(10.0, 10.0))
    with pytest.raises(
        PlanningError,
        match=r"conflicting constraints \(pins and private inputs\): conv is pinned "
        r"to the server .*consumes the raw node norm",
    ):
        plan_pipelined(profile, 2, pin_server=["conv"])
    with pytest.raises(
        PlanningError,
        match="conflicting pins: conv is pinned to the server but its descendant fc is "
        r"pinned to the device \(conv -> fc\)",
    ):
        plan_pipelined(profile, 2, private_inputs=False, pin_server=["conv"], pin_device=["fc"])
    with pytest.raises(PlanningError, match="x is pinned to the server but is a model input"):
        plan_pipelined(profile, 2, private_inputs=False, pin_server=["x"])
    with pytest.raises(PlanningError, match=r"pinned node\(s\) not in the profile: nope"):
        plan_pipelined(profile, pin_device=["nope"])
    assert {"conv", "fc"} <= set(plan_pipelined(profile, 2, private_inputs=False, pin_server=["conv"]).server)


# ----------------------------------------------------------------------------------------------
# The optimiser against brute force.


@pytest.mark.parametrize("seed", range(40))
def test_optimum_matches_brute_force(seed):
    profile, rng = random_profile(seed), random.Random(seed)
    for private in (False, True):
        placements = feasible_placements(profile, private)
        footprints = [device_footprint(profile, device) for device in placements]
        for budget in (None, min(footprints), rng.randint(min(footprints), max(footprints))):
            fitting = [device for device, size in zip(placements, footprints) if budget is None or size <= budget]
            for m in (1, 2, 4, 8):
                codec = rng.choice(list(CODEC_RATIOS))
                optimum, _ = brute_force(profile, m, codec, fitting)
                result = plan_pipelined(profile, m, codec, private_inputs=private, device_memory=budget)
                assert result.exact and result.gap == 0.0
                assert result.predicted_step_s == pytest.approx(optimum, rel=1e-9, abs=1e-12)
                assert_consistent(profile, result, private, budget)


@pytest.mark.parametrize("seed", range(20))
def test_optimum_with_pins_matches_brute_force(seed):
    profile, rng = random_profile(seed), random.Random(seed)
    for _ in range(4):
        pin_device = rng.sample(profile.names, rng.randint(0, 1))
        pin_server = rng.sample(profile.names, rng.randint(0, 2))
        private, m = rng.random() < 0.5, rng.choice([1, 2, 4, 8])
        optimum, _ = brute_force(profile, m, private=private, pin_device=pin_device, pin_server=pin_server)
        if optimum == math.inf:
            with pytest.raises(PlanningError, match="conflicting"):
                plan_pipelined(profile, m, private_inputs=private, pin_device=pin_device, pin_server=pin_server)
            continue
        result = plan_pipelined(profile, m, private_inputs=private, pin_device=pin_device, pin_server=pin_server)
        assert result.predicted_step_s == pytest.approx(optimum, rel=1e-9, abs=1e-12)
        assert_consistent(profile, result, private, None, pin_device, pin_server)


@pytest.mark.parametrize("seed", range(20))
def test_sequential_optimum_is_the_one_micro_batch_optimum(seed):
    profile, rng = random_profile(seed), random.Random(seed)
    private = rng.random() < 0.5
    low, high = footprint_range(profile, private)
    budget = rng.choice([None, rng.randint(low, high)])
    codec = rng.choice(list(CODEC_RATIOS))
    result = sequential_optimum(profile, codec, private_inputs=private, device_memory=budget)
    optimum, _ = brute_force(profile, 1, codec, private=private, budget=budget)
    assert result.micro_batches == 1 and result.exact
    assert result.predicted_step_s == pytest.approx(optimum, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(15))
def test_a_budget_below_every_footprint_names_the_smallest(seed):
    profile = random_profile(seed)
    for private in (False, True):
        low, _ = footprint_range(profile, private)
        if low == 0:
            continue
        with pytest.raises(
            PlanningError,
            match=f"device memory budget of {low - 1} bytes is too small: the smallest "
            f"device footprint of a feasible placement is {low} bytes",
        ):
            plan_pipelined(profile, 4, private_inputs=private, device_memory=low - 1)
    with pytest.raises(PlanningError, match="device_memory must be >= 0"):
        plan_pipelined(profile, device_memory=-1, private_inputs=False)


@pytest.mark.parametrize("seed", range(25))
def test_past_the_cap_the_bound_brackets_the_optimum(seed):
    profile, rng = random_profile(seed, nodes=12), random.Random(seed)
    private = rng.random() < 0.5
    low, high = footprint_range(profile, private)
    budget = rng.choice([None, rng.randint(low, high)])
    m, codec = rng.choice([1, 2, 4, 8]), rng.choice(list(CODEC_RATIOS))
    optimum, _ = brute_force(profile, m, codec, private=private, budget=budget)
    result = plan_pipelined(profile, m, codec, private_inputs=private, device_memory=budget, max_placements=2)
    assert result.evaluated <= 2
    assert result.lower_bound <= optimum * (1 + 1e-9) + 1e-12
    assert result.predicted_step_s >= optimum * (1 - 1e-9) - 1e-12
    if result.exact:
        assert result.predicted_step_s == pytest.approx(optimum, rel=1e-9, abs=1e-12)
    assert_consistent(profile, result, private, budget)


def test_best_micro_batches_takes_the_best_candidate():
    profile = random_profile(7)
    candidates = [1, 2, 3, 4, 8]
    plans = {m: plan_pipelined(profile, m, private_inputs=False) for m in candidates}
    best = best_micro_batches(profile, candidates=candidates, private_inputs=False)
    expected = min(candidates, key=lambda m: (plans[m].predicted_step_s, m))
    assert best.micro_batches == expected and best.predicted_step_s == plans[expected].predicted_step_s
    assert best.exact and best.lower_bound == pytest.approx(min(plan.lower_bound for plan in plans.values()))
    with pytest.raises(PlanningError, match="at least one candidate"):
        best_micro_batches(profile, candidates=[], private_inputs=False)


def test_pipelining_moves_the_optimum_to_an_intermediate_cut():
    # Device and server equally fast, a slow link: sequentially the split only adds transfers,
    # pipelined the three overlap and a middle cut pays.
    nodes = [NodeCost("x", "input", (), 1000, 0.0, 0.0, param_bytes=0)]
    for i in range(6):
        nodes.append(NodeCost(f"l{i}", "op", (nodes[-1].name,), 100, 3.0, 3.0, param_bytes=10))
    profile = Profile(nodes, ["l5"], Link(100.0, 100.0))
    assert sequential_optimum(profile).server == ()
    pipelined = plan_pipelined(profile, 8)
    assert pipelined.server and pipelined.device != ("x",) and pipelined.exact
    assert pipelined.predicted_step_s < sequential_optimum(profile).predicted_step_s


# ----------------------------------------------------------------------------------------------
# Large graphs.


def with_params_and_memory(profile: Profile) -> Profile:
    nodes = [
        NodeCost(
            node.name,
            node.kind,
            node.inputs,
            node.out_bytes,
            node.device_s,
            node.server_s,
            node.extra,
            param_bytes=0 if node.kind == "input" or "relu" in node.name or "add" in node.name else 4096,
            device_mem_bytes=2 * node.out_bytes,
        )
        for node in profile.nodes
    ]
    return Profile(nodes, profile.outputs, profile.link, profile.extra)


@pytest.mark.parametrize("rtt_ms", [1.0, 10.0])
def test_a_chain_of_blocks_of_300_nodes_plans_exactly(rtt_ms, capsys):
    profile = with_params_and_memory(residual_stack(300, link=Link.from_mbps(20.0, 100.0, rtt_ms=rtt_ms)))
    assert len(boundary_positions(StageCosts(profile))) > 25
    sequential = planner.plan(profile)
    timings = []
    for m in (1, 4, 16):
        started = time.perf_counter()
        result = plan_pipelined(profile, m, private_inputs=False)
        timings.append(time.perf_counter() - started)
        assert result.exact and result.evaluated < 5000
        if m == 1:
            assert result.predicted_step_s == pytest.approx(sequential.predicted_step_s, rel=1e-9)
    budget = sum(node.device_mem_bytes for node in profile.nodes) // 4
    budgeted = plan_pipelined(profile, 4, "int8", device_memory=budget)
    assert budgeted.exact and budgeted.device_footprint <= budget and not set(budgeted.server) & set(raw_nodes(profile))
    with capsys.disabled():
        shown = " / ".join(f"{t * 1e3:.1f}" for t in timings)
        print(f"\n300-node residual stack, rtt {rtt_ms} ms: M=1/4/16 planned in {shown} ms")


def test_a_wide_graph_past_the_cap_reports_a_certified_gap():
    profile = parallel_branches(9, 2, seed=3)
    result = plan_pipelined(profile, 4, private_inputs=False, max_placements=500)
    assert result.evaluated == 500
    assert result.gap >= 0.0 and result.lower_bound <= result.predicted_step_s
    exact = plan_pipelined(profile, 4, private_inputs=False)  # 3**9 placements: enumerated
    assert exact.exact and exact.evaluated > 500
    assert result.lower_bound <= exact.predicted_step_s * (1 + 1e-9) <= result.predicted_step_s * (1 + 2e-9)


@pytest.mark.parametrize("seed", range(30))
def test_one_micro_batch_plan_counts_the_message_cost(seed):
    """``plan_with_options`` at M=1 takes the sequential min cut, which charges no ``message_s``:
    the placement it returns must still be a T_1 optimum (device-only where the messages make it faster)."""
    from lightning_split.planning.constrained import plan_with_options

    profile = random_profile(seed)
    profile = dataclasses.replace(profile, link=dataclasses.replace(profile.link, message_s=0.3))
    for private in (False, True):
        optimum, _ = brute_force(profile, 1, "none", feasible_placements(profile, private))
        outcome = plan_with_options(profile, "blockwise", micro_batches=1, private_inputs=private)
        found = pipelined_step_time(profile, outcome.plan.device, 1, "none").total
        assert found == pytest.approx(optimum, rel=1e-9, abs=1e-12)


def test_a_fixed_part_is_paid_by_every_micro_batch_and_not_by_the_device_alone():
    """A node whose 3 s hold 1 s of per-micro-batch overhead: M micro-batches cost 3 + (M - 1) * 1 on that side."""
    nodes = [
        NodeCost("x", "input", (), 100, 0.0, 0.0, param_bytes=0),
        NodeCost("a", "op", ("x",), 100, 3.0, 3.0, param_bytes=8, device_fwd_s=1.0, device_fixed_s=1.0),
        NodeCost("b", "op", ("a",), 100, 3.0, 3.0, param_bytes=8, server_fixed_s=0.6),
    ]
    profile = Profile(nodes, ["b"], Link(math.inf, math.inf))
    assert nodes[1].stage_s("device", 1) == (1.0, 2.0)
    assert nodes[1].stage_s("device", 4) == pytest.approx((2.0, 4.0))  # 3 s more, split 1:2 as the node's time
    split = pipelined_step_time(profile, ["x", "a"], 4)
    assert (split.device_fwd_s, split.device_bwd_s) == pytest.approx((2.0, 4.0))
    assert split.server_fwd_s + split.server_bwd_s == pytest.approx(3.0 + 3 * 0.6)
    assert pipelined_step_time(profile, profile.names, 4).total == 6.0, "all on the device: the batch runs whole"
    with pytest.raises(PlanningError, match="StageCosts"):
        Objective(StageCosts(profile), 4, "none")
