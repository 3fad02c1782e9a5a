"""``lightning-split profile``: measured device costs, the server's measured or estimated, then ``plan``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_split import cli
from lightning_split.planning.profile import Profile


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_profile_cli_without_server_plans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    code, _, err = _run_cli(
        capsys,
        "profile", "--model", "tests.models:DagNet", "--input-shape", "32,1,8,8",
        "--warmup", "1", "--repeats", "2", "--cache-dir", str(tmp_path / "cache"), "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "server costs are estimated" in err
    profile = Profile.load(out)
    assert profile.extra["server_s_source"] == "estimated" and profile.extra["link_source"] == "assumed"
    assert profile.extra["device_s_source"] == "measured"
    code, stdout, err = _run_cli(capsys, "plan", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert set(result["device"]) | set(result["server"]) == set(profile.names)


def test_profile_cli_with_server_measures_both_sides(
    dagnet_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "profile.json"
    code, _, err = _run_cli(
        capsys,
        "profile", "--model", "tests.models:DagNet", "--input-shape", "32,1,8,8", "--server", dagnet_server.url,
        "--warmup", "1", "--repeats", "2", "--no-cache", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "link to" in err and "server costs of" in err
    profile = Profile.load(out)
    assert profile.extra["server_s_source"] == "measured" and profile.extra["link_source"] == "measured"
    assert all(node.server_s > 0 for node in profile.nodes if node.kind == "op")
    assert profile.link.rtt_s > 0
    code, stdout, err = _run_cli(capsys, "plan", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["method"] == "blockwise"


def test_profile_cli_refuses_link_with_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_cli(
        capsys,
        "profile", "--model", "tests.models:DagNet", "--server", "ws://127.0.0.1:9", "--link", "10mbit",
        "-o", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert code == 2 and "--link" in err
