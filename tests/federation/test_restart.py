"""A federation survives its server: SIGKILL `serve` twice mid-federation, restart it on the same --state-dir.

The three client processes of ``test_modes`` train through one server started with
``--state-dir``; the test kills it (SIGKILL: nothing is flushed) when its log shows a given
point of the federation, starts a new one on the same port and directory, and does it again.
The clients reconnect by themselves and the final models still equal the local references
(1e-5). The kill points are log lines (events), not durations.
"""

from __future__ import annotations

import signal
import socket

import pytest
import torch

from tests.federated import CLIENTS, local_sequential, local_splitfed, run_clients, until_logged
from tests.helpers import ServeProcess

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Restarts:
    """A `serve` with --state-dir that the test kills and starts again on the same port and directory."""

    def __init__(self, state_dir) -> None:
        self.state_dir = state_dir
        port = _free_port()
        self.args = ("--model", "tests.models:DagNet", "--port", str(port), "--state-dir", str(state_dir))
        self.servers = [ServeProcess(*self.args, "--status-every", "0", verbose=True)]

    @property
    def current(self) -> ServeProcess:
        return self.servers[-1]

    def kill_at(self, fragment: str) -> None:
        """When the current server logs ``fragment``: SIGKILL it, start a new one (it restores the federation)."""
        until_logged(self.current, fragment)
        self.current.proc.send_signal(signal.SIGKILL)
        self.current.proc.wait()
        self.servers.append(ServeProcess(*self.args, "--status-every", "0", verbose=True))
        until_logged(self.current, "federation digits restored at")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _assert_close(finals, expected) -> None:
    for client in range(CLIENTS):
        for key, value in expected[client].items():
            torch.testing.assert_close(finals[client][key], value, atol=1e-5, rtol=0, msg=f"client {client}: {key}")


def test_sequential_federation_resumes_after_its_server_is_killed_twice(tmp_path):
    restarts = Restarts(tmp_path / "state")
    try:

        def kill_twice() -> None:
            restarts.kill_at("federation digits: client 0 ended turn 0")  # between two turns
            restarts.kill_at("federation digits: turn 3 (round 1) is client 0's")  # inside a turn

        finals, _ = run_clients(restarts.current, "sequential", tmp_path, during=kill_twice)
    finally:
        restarts.stop()
    assert len(restarts.servers) == 3
    _assert_close(finals, [local_sequential(client) for client in range(CLIENTS)])
    assert not list((tmp_path / "state").rglob("*.lsw")), "a finished federation and its sessions leave no files"


def test_splitfed_federation_resumes_after_its_server_is_killed_twice(tmp_path):
    restarts = Restarts(tmp_path / "state")
    try:

        def kill_twice() -> None:
            restarts.kill_at("federation digits: round 0 averaged")  # between two rounds
            restarts.kill_at("contributed to round 2")  # a round with some contributions in

        finals, _ = run_clients(restarts.current, "splitfed", tmp_path, during=kill_twice)
    finally:
        restarts.stop()
    assert len(restarts.servers) == 3
    _assert_close(finals, local_splitfed())
    assert not list((tmp_path / "state").rglob("*.lsw")), "a finished federation and its sessions leave no files"
