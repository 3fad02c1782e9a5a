"""Federations against a real `serve` process: sequential turns and SplitFed rounds equal their local definitions.

Three client processes, each on its own shard of digits, SGD with momentum, cut after the
first layer, 2 rounds of 5 steps. The clients synchronise through the server only; the test
waits for the processes to end (no sleeps).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.federated import CLIENTS, local_sequential, local_splitfed, run_clients
from tests.helpers import ServeProcess


@pytest.fixture
def fed_server():
    server = ServeProcess("--model", "tests.models:DagNet", verbose=True)
    yield server
    server.stop()


@pytest.mark.slow
def test_sequential_last_client_equals_local_training_on_the_interleaved_stream(fed_server, tmp_path):
    finals, _ = run_clients(fed_server, "sequential", tmp_path)
    for client in range(CLIENTS):
        for key, value in local_sequential(client).items():
            torch.testing.assert_close(finals[client][key], value, atol=1e-5, rtol=0, msg=f"client {client}: {key}")
    server_log = "".join(fed_server.stderr)
    assert "federation digits: turn 5 (round 1) is client 2's" in server_log
    assert "waits: turn 0 (round 0), waiting for client 0" in server_log  # the server's log of its federation


@pytest.mark.slow
def test_sequential_relays_the_learning_rate_schedule_with_the_model(fed_server, tmp_path):
    """A StepLR halving every 5 steps follows the federation's steps, not each client's: it passes at each turn."""
    finals, _ = run_clients(fed_server, "sequential", tmp_path, group="scheduled", extra=["scheduler"])
    for client in range(CLIENTS):
        for key, value in local_sequential(client, scheduler=True).items():
            torch.testing.assert_close(finals[client][key], value, atol=1e-5, rtol=0, msg=f"client {client}: {key}")


@pytest.mark.slow
def test_splitfed_every_client_equals_local_fedavg(fed_server, tmp_path):
    finals, _ = run_clients(fed_server, "splitfed", tmp_path)
    expected = local_splitfed()
    for client in range(CLIENTS):
        for key, value in expected[client].items():
            torch.testing.assert_close(finals[client][key], value, atol=1e-5, rtol=0, msg=f"client {client}: {key}")
    server_log = "".join(fed_server.stderr)
    assert "federation digits: round 2 averaged over clients [0, 1, 2] (480 samples)" in server_log


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 16 processes start on a shared CPU
def test_sixteen_clients_in_one_splitfed_federation_finish_on_one_server(fed_server, tmp_path, record_property):
    clients = 16
    finals, _ = run_clients(fed_server, "splitfed", tmp_path, clients=clients, group="load", steps=(1, 2))
    for client in range(1, clients):  # all end on the last average
        for key, value in finals[0].items():
            if value.is_floating_point():
                torch.testing.assert_close(finals[client][key], value, atol=0, rtol=0, msg=f"client {client}: {key}")
    server_log = "".join(fed_server.stderr)
    assert f"federation load: round 2 averaged over clients {list(range(clients))}" in server_log
    peak = peak_rss_mib(fed_server.proc.pid)
    record_property("server_peak_rss_mib", peak)
    print(f"16-client splitfed: server peak RSS {peak:.0f} MiB")  # reported, not asserted
