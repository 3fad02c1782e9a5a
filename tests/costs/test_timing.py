"""Node timing: every node's forward+backward, calibration to whole passes, optimizer steps, nothing changed."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_split.costs.timing import fixed_part, measure_node_costs, time_node_costs
from lightning_split.transport.optimizers import describe_optimizers
from tests.costs.common import ConvNet, param_bytes, trace
from tests.models import DagNet


def test_node_costs_cover_every_node_and_are_positive_for_compute() -> None:
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(32, 1, 8, 8)
    traced = trace(model, x)
    costs = measure_node_costs(traced, (x,), {}, warmup=1, repeats=3)
    assert list(costs) == [info.name for info in traced.nodes]
    for info in traced.nodes:
        if info.op == "placeholder":
            assert costs[info.name] == 0.0
        else:
            assert costs[info.name] > 0.0, info.name
            assert math.isfinite(costs[info.name])


def test_measuring_leaves_state_mode_grads_and_rng_unchanged() -> None:
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(8, 3, 32, 32)
    traced = trace(model, x)
    model.eval()
    model.drop.train()  # a mixed pattern of flags, to see each one restored
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = x.clone()
    rng = torch.get_rng_state()

    measure_node_costs(traced, (x,), {}, warmup=1, repeats=2)

    assert {name: m.training for name, m in model.named_modules()} == modes
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), "parameters or buffers changed"
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(x, x_before)


def test_calibrated_costs_add_up_to_the_whole_pass() -> None:
    """Calibration scales every node by one factor so that the nodes sum to the timed whole forward+backward."""
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(8, 3, 32, 32)
    traced = trace(model, x)
    timed = time_node_costs(traced, (x,), {}, warmup=1, repeats=3)
    assert timed.whole_s is not None and timed.whole_s > 0 and timed.raw_sum_s > 0
    assert timed.scale == pytest.approx(timed.whole_s / timed.raw_sum_s, rel=1e-12)
    assert sum(timed.node_s.values()) == pytest.approx(timed.whole_s, rel=1e-9)
    assert timed.optimizer_s == 0.0 and not timed.optimizer_node_s
    print(f"nodes one by one {timed.raw_sum_s * 1e3:.2f} ms, whole pass {timed.whole_s * 1e3:.2f} ms")

    raw = time_node_costs(traced, (x,), {}, warmup=1, repeats=3, calibrate=False)
    assert raw.whole_s is None and raw.scale == 1.0
    assert sum(raw.node_s.values()) == pytest.approx(raw.raw_sum_s, rel=1e-12)


def test_optimizer_step_goes_to_parameter_nodes_by_bytes() -> None:
    """One optimizer step, timed on copies, is charged only to nodes whose parameters it trains, per byte."""
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(8, 3, 32, 32)
    traced = trace(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    described = describe_optimizers(model, [optimizer])
    assert described[0]["class"] == "SGD" and described[0]["defaults"]["momentum"] == 0.9

    timed = time_node_costs(traced, (x,), {}, warmup=1, repeats=3, optimizers=described)
    shares = timed.optimizer_node_s
    with_params = {info.name for info in traced.nodes if param_bytes(traced, info.name)}
    assert set(shares) == with_params == {"conv1", "bn", "conv2", "conv3", "fc"}
    assert timed.optimizer_s > 0 and sum(shares.values()) == pytest.approx(timed.optimizer_s, rel=1e-9)
    per_byte = {name: shares[name] / param_bytes(traced, name) for name in shares}
    assert max(per_byte.values()) == pytest.approx(min(per_byte.values()), rel=1e-9)
    assert timed.whole_s is not None
    assert sum(timed.node_s.values()) == pytest.approx(timed.whole_s + timed.optimizer_s, rel=1e-9)
    assert all(timed.node_s[name] > shares[name] for name in shares)

    head_only = torch.optim.Adam(model.fc.parameters())
    only_fc = time_node_costs(traced, (x,), {}, warmup=1, repeats=2, optimizers=describe_optimizers(model, [head_only]))
    assert set(only_fc.optimizer_node_s) == {"fc"} and only_fc.optimizer_s > 0


def test_timing_optimizers_leaves_model_and_optimizer_untouched() -> None:
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(8, 3, 32, 32)
    traced = trace(model, x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    time_node_costs(traced, (x,), {}, warmup=1, repeats=2, optimizers=describe_optimizers(model, [optimizer]))

    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), "parameters or buffers changed"
    assert all(p.grad is None for p in model.parameters())
    assert not optimizer.state, "the real optimizer took a step"
    assert torch.equal(torch.get_rng_state(), rng)


def test_measuring_runs_in_train_mode() -> None:
    """BatchNorm in train mode updates its running statistics: measuring must see that happen (then undo it)."""
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(8, 3, 32, 32)
    traced = trace(model, x)
    model.eval()
    seen: list[bool] = []
    handle = model.bn.register_forward_hook(lambda module, args, out: seen.append(module.training))
    try:
        measure_node_costs(traced, (x,), {}, warmup=0, repeats=1)
        measure_node_costs(traced, (x,), {}, warmup=0, repeats=1, train=False)
    finally:
        handle.remove()
    assert seen[0] is True and seen[-1] is False
    assert not model.bn.training


def test_the_fixed_part_is_the_line_through_both_sizes_at_zero_samples() -> None:
    assert fixed_part(4.0, 1.0, 32, 8) == 0.0  # a quarter of the samples, a quarter of the time
    assert fixed_part(4.0, 2.5, 32, 8) == pytest.approx(2.0)  # 2 s + 1/16 s per sample
    assert fixed_part(4.0, 4.0, 32, 8) == 4.0  # the batch changes nothing: all of it is paid again
    assert fixed_part(4.0, 0.5, 32, 8) == 0.0 and fixed_part(4.0, 5.0, 32, 8) == 4.0, "noise is clipped"
    assert fixed_part(3.0, 2.0, 5, 3) == pytest.approx(0.5)  # uneven pieces: 0.5 + 0.5 per sample
    with pytest.raises(ValueError, match="fewer micro-batch samples"):
        fixed_part(1.0, 1.0, 4, 4)


def test_micro_batch_timing_times_the_first_micro_batch_as_the_runtime_cuts_it() -> None:
    """With M=3 on 10 samples the nodes also run on the runtime's first piece (4 samples); every node gets a
    forward share and a fixed part within its cost. Without micro-batches nothing more is timed."""
    torch.manual_seed(0)
    model, x = DagNet(), torch.randn(10, 1, 8, 8)
    traced = trace(model, x)
    timed = time_node_costs(traced, (x,), {}, warmup=1, repeats=3, micro_batches=3)
    assert timed.micro_batch is not None
    assert (timed.micro_batch.samples, timed.micro_batch.micro_samples, timed.micro_batch.micro_batches) == (10, 4, 3)
    assert timed.details()["micro_samples"] == 4 and timed.micro_batch.whole_s is not None
    for info in traced.nodes:
        if info.op == "placeholder":
            assert info.name not in timed.forward_s or timed.forward_s[info.name] == 0.0
            continue
        assert 0.0 <= timed.fixed_s[info.name] <= timed.node_s[info.name], info.name
        assert 0.0 < timed.forward_s[info.name] <= timed.node_s[info.name], info.name
    plain = time_node_costs(traced, (x,), {}, warmup=1, repeats=2)
    assert plain.micro_batch is None and not plain.fixed_s and not plain.forward_s, "M=1 times the batch only"
