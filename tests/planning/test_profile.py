import dataclasses
import json

import pytest

from lightning_split.planning.profile import FORMAT, Link, NodeCost, Profile, ProfileError, chain_profile


def spec_example() -> dict:
    return {
        "format": FORMAT,
        "link": {"uplink_bytes_per_s": 12500000.0, "downlink_bytes_per_s": 62500000.0, "rtt_s": 0.004},
        "nodes": [
            {"name": "x", "kind": "input", "inputs": [], "out_bytes": 393216, "device_s": 0.0, "server_s": 0.0},
            {
                "name": "conv1",
                "kind": "op",
                "inputs": ["x"],
                "out_bytes": 2097152,
                "device_s": 0.0041,
                "server_s": 0.00012,
                "module": "conv1",
                "flops": 123,
            },
        ],
        "outputs": ["conv1"],
        "batch_size": 32,
    }


def test_spec_example_round_trips_with_extra_fields(tmp_path):
    profile = Profile.from_json(spec_example())
    assert profile.names == ["x", "conv1"]
    assert profile.node("conv1").extra == {"module": "conv1", "flops": 123}
    path = tmp_path / "p.json"
    profile.save(path)
    assert json.loads(path.read_text()) == spec_example()
    assert Profile.load(path).to_json() == spec_example()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other/9"), "unknown profile format"),
        (lambda d: d["nodes"].reverse(), "not an earlier node"),
        (lambda d: d["nodes"][1].update(kind="layer"), "has kind 'layer'"),
        (lambda d: d["nodes"][1].update(device_s=-1.0), "device_s=-1.0"),
        (lambda d: d.update(outputs=["fc"]), "output 'fc'"),
        (lambda d: d["nodes"][1].pop("out_bytes"), "lacks field(s) out_bytes"),
        (lambda d: d["link"].update(uplink_bytes_per_s=0), "uplink_bytes_per_s"),
        (lambda d: d["nodes"].append(dict(d["nodes"][0])), "appears twice"),
    ],
)
def test_malformed_profiles_name_the_problem(mutate, message):
    data = spec_example()
    mutate(data)
    with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Profile.from_json(data)


def test_link_from_mbps_and_chain_helper():
    link = Link.from_mbps(100, rtt_ms=2)
    assert link.uplink_bytes_per_s == pytest.approx(12.5e6)
    assert link.rtt_s == pytest.approx(0.002)
    profile = chain_profile([1, 2], [0.1, 0.2], [10, 20], link)
    assert profile.outputs == ["n1"]
    assert profile.consumers() == {"x": ["n0"], "n0": ["n1"], "n1": []}
    assert isinstance(profile.nodes[1], NodeCost)


def with_optional_fields() -> dict:
    data = spec_example()
    data["link"]["message_s"] = 0.0015
    data["nodes"][0].update(param_bytes=0, device_mem_bytes=0)
    data["nodes"][1].update(param_bytes=6912, device_mem_bytes=2125000, device_fwd_s=0.0013, server_fwd_s=4e-05)
    return data


def test_optional_fields_are_read_as_fields_and_written_back_unchanged(tmp_path):
    profile = Profile.from_json(with_optional_fields())
    conv = profile.node("conv1")
    assert (conv.param_bytes, conv.device_mem_bytes, conv.device_fwd_s, conv.server_fwd_s) == (
        6912,
        2125000,
        0.0013,
        4e-05,
    )
    assert profile.link.message_s == 0.0015 and profile.link.per_message_s == 0.0015
    path = tmp_path / "p.json"
    profile.save(path)
    assert path.read_text() == json.dumps(with_optional_fields(), indent=1) + "\n"  # same keys, same order


def test_optional_fields_absent_stay_absent():
    profile = Profile.from_json(spec_example())
    node = profile.node("conv1")
    assert (node.param_bytes, node.device_mem_bytes, node.device_fwd_s, node.server_fwd_s) == (None,) * 4
    assert profile.link.message_s is None and profile.link.per_message_s == 0.0
    assert profile.to_json() == spec_example()
    assert node.forward_s("device") == pytest.approx(0.0041 / 3) and node.forward_s("server") == pytest.approx(4e-05)


def test_optional_fields_given_as_fields_are_written_after_the_required_ones():
    node = NodeCost("conv", "op", ("x",), 10, 0.3, 0.03, {"module": "conv"}, param_bytes=40, device_fwd_s=0.1)
    assert list(node.to_json()) == ["name", "kind", "inputs", "out_bytes", "device_s", "server_s", "param_bytes",
                                    "device_fwd_s", "module"]  # fmt: skip
    assert node.forward_s("device") == 0.1 and node.forward_s("server") == pytest.approx(0.01)
    link = Link(1.0, 2.0, 0.5, message_s=0.25)
    assert link.to_json() == {"uplink_bytes_per_s": 1.0, "downlink_bytes_per_s": 2.0, "rtt_s": 0.5, "message_s": 0.25}
    assert "message_s" not in Link(1.0, 2.0).to_json()


def test_param_bytes_in_extra_as_the_estimator_writes_it_is_read_as_the_field():
    # estimate_profile (and measured_profile, which reuses its nodes) put param_bytes among the extras.
    node = NodeCost("conv", "op", ("x",), 10, 0.3, 0.03, {"op": "call_module", "param_bytes": 4000, "shape": [1]})
    assert node.param_bytes == 4000 and node.extra["param_bytes"] == 4000
    assert list(node.to_json())[6:] == ["op", "param_bytes", "shape"]
    replaced = dataclasses.replace(node, param_bytes=8000)
    assert replaced.param_bytes == 8000 and replaced.extra["param_bytes"] == 8000  # the two never disagree
    assert replaced.to_json()["param_bytes"] == 8000
    assert NodeCost("c", "op", (), 1, 0.0, 0.0, {"param_bytes": 12.0}).param_bytes == 12


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["nodes"][1].update(param_bytes=-1), "node 'conv1' has param_bytes=-1"),
        (lambda d: d["nodes"][1].update(param_bytes="many"), "node 'conv1' has param_bytes='many'"),
        (lambda d: d["nodes"][1].update(param_bytes=1.5), "node 'conv1' has param_bytes=1.5"),
        (lambda d: d["nodes"][1].update(device_mem_bytes=-5), "node 'conv1' has device_mem_bytes=-5"),
        (lambda d: d["nodes"][1].update(device_fwd_s=-0.1), "node 'conv1' has device_fwd_s=-0.1"),
        (lambda d: d["nodes"][1].update(server_fwd_s="x"), "node 'conv1' has server_fwd_s='x'"),
        (lambda d: d["nodes"][1].update(device_fwd_s=0.5), "device_fwd_s=0.5 above its device_s=0.0041"),
        (lambda d: d["link"].update(message_s=-1.0), "link.message_s"),
        (lambda d: d["link"].update(message_s="slow"), "link.message_s"),
    ],
)
def test_malformed_optional_fields_name_the_node_and_field(mutate, message):
    data = with_optional_fields()
    mutate(data)
    with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Profile.from_json(data)


def test_fixed_parts_are_read_written_and_checked():
    node = NodeCost("conv", "op", ("x",), 10, 0.3, 0.03, device_fixed_s=0.1, server_fixed_s=0.01)
    data = node.to_json()
    assert (data["device_fixed_s"], data["server_fixed_s"]) == (0.1, 0.01)
    read = NodeCost.from_json(data)
    assert (read.device_fixed_s, read.server_fixed_s, read.to_json()) == (0.1, 0.01, data)
    nodes = [NodeCost("x", "input", (), 10, 0.0, 0.0), dataclasses.replace(node, device_fixed_s=0.5)]
    with pytest.raises(ProfileError, match=r"device_fixed_s=0.5 above its device_s=0.3 \(the part a micro-batch pays"):
        Profile(nodes, ["conv"], Link(1e6, 1e6))
