"""Device training memory of a placement, from tensor sizes."""

from __future__ import annotations

from lightning_split.planning.memory import DeviceMemory, device_memory, node_training_bytes
from lightning_split.planning.profile import Link, NodeCost, Profile


def _profile(device_mem: dict[str, int] | None = None) -> Profile:
    mem = device_mem or {}
    nodes = [
        NodeCost("x", "input", (), 1000, 0.0, 0.0, device_mem_bytes=mem.get("x")),
        NodeCost("conv", "op", ("x",), 4000, 1.0, 0.1, param_bytes=400, device_mem_bytes=mem.get("conv")),
        NodeCost("flat", "op", ("conv",), 4000, 0.0, 0.0, {"op": "call_function", "target": "torch.flatten"},
                 param_bytes=0, device_mem_bytes=mem.get("flat")),
        NodeCost("fc", "op", ("flat",), 40, 1.0, 0.1, param_bytes=1000, device_mem_bytes=mem.get("fc")),
    ]  # fmt: skip
    return Profile(nodes, ["fc"], Link(1e6, 1e6))


def test_parameters_gradients_optimizer_state_and_saved_activations():
    profile = _profile()
    memory = device_memory(profile, ["x", "conv", "flat"])
    # The view saves nothing of its own; the input batch and the conv's output are held.
    assert memory == DeviceMemory(400, 400, 800, 1000 + 4000, optimizer_slots=2)
    assert memory.total == 400 * 4 + 5000
    sgd = device_memory(profile, ["x", "conv", "flat"], optimizer_slots=0)
    assert sgd.optimizer_state == 0 and sgd.total == 800 + 5000
    everything = device_memory(profile, profile.names, optimizer_slots=1)
    assert everything.parameters == 1400 and everything.optimizer_state == 1400
    assert everything.activations == 1000 + 4000 + 40
    data = everything.to_json()
    assert data["total_bytes"] == everything.total and data["estimated"] is True and data["optimizer_slots"] == 1


def test_the_estimator_s_per_node_footprint_sums_to_the_same_total():
    sizes = {"x": 1000, "conv": node_training_bytes(400, 4000), "flat": 0, "fc": node_training_bytes(1000, 40)}
    profile = _profile(sizes)
    memory = device_memory(profile, profile.names)
    assert memory.total == sum(sizes.values()) and not memory.measured


def test_measured_footprints_give_the_total_and_leave_the_rest_to_activations():
    sizes = {"x": 1000, "conv": 9000, "flat": 0, "fc": 5000}
    profile = _profile(sizes)
    memory = device_memory(profile, profile.names)
    assert memory.measured and memory.total == 15000
    assert memory.parameters == 1400 and memory.activations == 15000 - 4 * 1400
    assert memory.to_json()["estimated"] is False


def test_no_device_nodes_hold_nothing():
    assert device_memory(_profile(), []).total == 0
