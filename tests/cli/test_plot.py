"""`lightning_split.plot` and `plan --plot`: the figure files, the condensed graph, the bandwidth sweep."""

from __future__ import annotations

import json
import random
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lightning_split.cli import main
from lightning_split.planning.planner import baselines, plan
from lightning_split.planning.profile import Link, NodeCost, Profile
from lightning_split.plot import PlotError, graph_view, plot_plan, scaled_link, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def op(name: str, inputs: list[str], out_bytes: int, device_s: float, server_s: float) -> NodeCost:
    return NodeCost(name, "op", tuple(inputs), out_bytes, device_s, server_s)


def diamond() -> Profile:
    """x -> stem -> (left, right) -> join -> head: a big input, a small stem output, a slow device.

    At 100 Mbit/s the stem stays on the device and its output is the only tensor to cross.
    """
    nodes = [
        NodeCost("x", "input", (), 4_000_000, 0.0, 0.0),
        op("stem", ["x"], 50_000, 0.002, 0.0001),
        op("left", ["stem"], 200_000, 0.05, 0.001),
        op("right", ["stem"], 200_000, 0.05, 0.001),
        op("join", ["left", "right"], 200_000, 0.02, 0.001),
        op("head", ["join"], 4_000, 0.01, 0.001),
    ]
    return Profile(nodes, ["head"], Link.from_mbps(100.0, rtt_ms=2.0), {"model": "diamond"})


def residual_stack(blocks: int, seed: int = 0) -> Profile:
    """A ResNet-like profile: stem, ``blocks`` blocks of 10 nodes with a skip edge, head (``10 * blocks + 8`` nodes).

    Activations shrink with depth and the server is 10-50x faster, so the best cut moves with the link.
    """
    rng = random.Random(seed)
    nodes = [NodeCost("x", "input", (), 600_000, 0.0, 0.0)]

    def add(name: str, inputs: list[str], depth: float) -> str:
        device = rng.uniform(1e-4, 5e-3) * 50 / blocks
        size = int(3_000_000 * 0.5 ** (6 * depth) * rng.uniform(0.5, 2.0)) + 1000
        nodes.append(op(name, inputs, size, device, device / rng.uniform(10, 50)))
        return name

    h = add("maxpool", [add("relu", [add("bn1", [add("conv1", ["x"], 0.0)], 0.0)], 0.0)], 0.0)
    for b in range(blocks):
        depth = (b + 1) / blocks
        t = h
        for i in (1, 2, 3):
            t = add(f"b{b}_bn{i}", [add(f"b{b}_conv{i}", [t], depth)], depth)
            if i < 3:
                t = add(f"b{b}_relu{i}", [t], depth)
        h = add(f"b{b}_out", [add(f"b{b}_add", [t, h], depth)], depth)
    h = add("flatten", [add("avgpool", [h], 1.0)], 1.0)
    add("fc", [h], 1.0)
    return Profile(nodes, ["fc"], Link.from_mbps(5.0, 25.0, rtt_ms=4.0), {"model": f"residual_stack({blocks})"})


def svg_texts(path: Path) -> list[str]:
    """The text content of every <text> element of an SVG file (which must parse as XML)."""
    root = ET.parse(path).getroot()
    return ["".join(element.itertext()) for element in root.iter() if element.tag.endswith("}text")]


def names_shown(texts: list[str], profile: Profile) -> set[str]:
    joined = "\n".join(texts)
    return {name for name in profile.names if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", joined)}


@pytest.fixture(scope="module")
def stack() -> Profile:
    profile = residual_stack(49)
    assert len(profile.nodes) == 498
    return profile


def test_png_and_svg_of_a_small_graph(tmp_path: Path) -> None:
    profile = diamond()
    result = plan(profile)
    assert result.cut == ("stem",)  # the premise: a cut in the middle of the graph

    png = plot_plan(profile, result, tmp_path / "plan.png")
    assert png == tmp_path / "plan.png"
    assert png.read_bytes()[:8] == PNG_MAGIC

    texts = svg_texts(plot_plan(profile, result, tmp_path / "plan.SVG"))
    assert names_shown(texts, profile) == set(profile.names)  # one box per node, each named
    crossing = [text for text in texts if text.startswith("stem:")]
    assert crossing == ["stem: 48.8 KiB"]  # the cut tensor's edge, labeled with its size
    assert any("head" in text and "output" in text for text in texts)


def test_small_graph_view_has_one_box_per_node_and_the_cut_edge() -> None:
    profile = diamond()
    result = plan(profile)
    view = graph_view(profile, result)
    assert not view.condensed
    assert [box.nodes for box in view.boxes] == [(name,) for name in profile.names]
    assert [box.side for box in view.boxes] == ["device", "device", "server", "server", "server", "server"]
    assert [box.output for box in view.boxes] == [False] * 5 + [True]
    assert view.layers == (0, 1, 2, 2, 3, 4)
    crossing = [edge for edge in view.edges if edge.crossing]
    assert [(edge.tensors, edge.out_bytes) for edge in crossing] == [(("stem",), 50_000)] * 2
    assert len(view.edges) == 6


def test_big_graph_is_drawn_as_blocks(tmp_path: Path, stack: Profile) -> None:
    result = plan(stack)
    assert result.device and result.server  # the premise: a cut inside the stack
    view = graph_view(stack, result)
    assert view.condensed
    assert 10 <= len(view.boxes) <= 41
    covered = [name for box in view.boxes for name in box.nodes]
    assert sorted(covered) == sorted(stack.names)  # every node in exactly one block
    device = set(result.device)
    for box in view.boxes:
        assert {name in device for name in box.nodes} == {box.side == "device"}
    crossing = {name for edge in view.edges if edge.crossing for name in edge.tensors}
    assert crossing == set(result.cut)

    texts = svg_texts(plot_plan(stack, result, tmp_path / "stack.svg"))
    block_labels = [text for text in texts if re.search(r"\(\d+ nodes?\)", text)]
    assert len(block_labels) == len(view.boxes)
    shown = names_shown(texts, stack)
    assert len(shown) <= 2 * len(view.boxes) + len(result.cut)  # first/last of each block and the cut, not 498
    assert set(result.cut) <= shown


def test_sweep_changes_agree_with_planning_on_both_sides(stack: Profile) -> None:
    curves = sweep(stack, tolerance=1.01)
    assert len(curves.changes) >= 2
    for change in curves.changes:
        assert change.below_mbps < change.mbps < change.above_mbps <= change.below_mbps * 1.01
        below = plan(stack.with_link(scaled_link(stack.link, change.below_mbps)))
        above = plan(stack.with_link(scaled_link(stack.link, change.above_mbps)))
        assert below.device == change.before.device
        assert above.device == change.after.device
        assert below.device != above.device
    for first, second in zip(curves.changes, curves.changes[1:]):
        assert first.above_mbps <= second.below_mbps
        assert first.after.device == second.before.device

    for at, optimal, cut in zip(curves.mbps[::10], curves.optimal[::10], curves.cuts[::10]):
        linked = stack.with_link(scaled_link(stack.link, at))
        assert plan(linked).predicted_step_s == optimal
        assert plan(linked).cut == cut
        for name, value in baselines(linked).items():
            assert curves.baselines[name][curves.mbps.index(at)] == value
            assert optimal <= value * (1 + 1e-9)


def test_a_coarse_sweep_finds_the_same_changes(stack: Profile) -> None:
    dense = sweep(stack)
    coarse = sweep(stack, bandwidths=[1.0, 1000.0])
    assert coarse.mbps == (1.0, 1000.0)
    assert [change.after.device for change in coarse.changes] == [change.after.device for change in dense.changes]


def test_scaled_link_keeps_the_ratio_and_rtt() -> None:
    link = scaled_link(Link.from_mbps(20.0, 100.0, rtt_ms=4.0), 40.0)
    assert link.uplink_bytes_per_s == pytest.approx(5e6)
    assert link.downlink_bytes_per_s == pytest.approx(25e6)
    assert link.rtt_s == pytest.approx(0.004)
    unlimited_down = scaled_link(Link(1e6, float("inf"), 0.01), 8.0)
    assert unlimited_down.uplink_bytes_per_s == pytest.approx(1e6)
    assert unlimited_down.downlink_bytes_per_s == float("inf")


def test_unsupported_suffix_and_missing_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = diamond()
    with pytest.raises(PlotError, match=r"\.png or \.svg"):
        plot_plan(profile, plan(profile), tmp_path / "plan.pdf")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is not installed
    with pytest.raises(PlotError, match="pip install matplotlib"):
        plot_plan(profile, plan(profile), tmp_path / "plan.png")
    assert not list(tmp_path.iterdir())


def test_cli_plot_with_json_keeps_stdout_one_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile_path = tmp_path / "diamond.json"
    diamond().save(profile_path)
    figure = tmp_path / "diamond.svg"
    assert main(["plan", str(profile_path), "--json", "--plot", str(figure)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["cut"] == ["stem"]
    assert str(figure) in err
    assert "stem" in "\n".join(svg_texts(figure))


def test_cli_plot_with_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figure = tmp_path / "dagnet.png"
    code = main(["plan", "--model", "tests.models:DagNet", "--input-shape", "4,1,8,8", "--plot", str(figure)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("Plan for tests.models:DagNet")
    assert figure.read_bytes()[:8] == PNG_MAGIC
    assert str(figure) in err


def test_cli_rejects_an_unknown_figure_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile_path = tmp_path / "diamond.json"
    diamond().save(profile_path)
    assert main(["plan", str(profile_path), "--json", "--plot", str(tmp_path / "plan.jpg")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert ".png or .svg" in err
    assert not (tmp_path / "plan.jpg").exists()


def test_sweep_rejects_bad_arguments() -> None:
    profile = diamond()
    with pytest.raises(ValueError, match="positive"):
        sweep(profile, bandwidths=[0.0, 10.0])
    with pytest.raises(ValueError, match="ratio above 1"):
        sweep(profile, tolerance=1.0)
    with pytest.raises(ValueError, match="exact method"):
        sweep(profile, method="device_only")


def test_the_picture_says_what_crosses_and_the_codec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figure = tmp_path / "dagnet.svg"
    args = ["plan", "--model", "tests.models:DagNet", "--input-shape", "4,1,8,8", "--codec", "int8"]
    args += ["--uplink-mbps", "1000", "--device-gflops", "0.1", "--plot", str(figure)]
    assert main(args) == 0
    report, _ = capsys.readouterr()
    texts = "\n".join(svg_texts(figure))
    crossing = [line.strip() for line in report.splitlines() if line.strip().startswith(("Codec", "No raw input"))]
    assert crossing, report  # the plan splits, so the report has the lines the picture must show
    for line in crossing:
        assert line in texts
