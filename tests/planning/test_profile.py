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
