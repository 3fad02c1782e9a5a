"""Federations against a real `serve` process: sequential turns and SplitFed rounds equal their local definitions.

Three client processes, each on its own shard of digits, SGD with momentum, cut after the
first layer, 2 rounds of 5 steps. The clients synchronise through the server only; the test
waits for the processes to end (no sleeps).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader

from tests.fedclient import BATCH, initial_model, shard
from tests.helpers import ROOT, ServeProcess, trainer

CLIENTS, ROUND_STEPS, ROUNDS = 3, 5, 2
STEPS = ROUND_STEPS * ROUNDS


class ClientProcess:
    """One ``tests.fedclient`` process; :meth:`expect` blocks until it has printed a line containing a fragment."""

    def __init__(
        self, server: ServeProcess, mode: str, client: int, clients: int, out, group: str, steps=(ROUND_STEPS, STEPS)
    ) -> None:
        command = [sys.executable, "-m", "tests.fedclient", server.url, mode, str(client), str(clients)]
        command += [str(steps[0]), str(steps[1]), str(out), group]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=server.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append("")  # end of output
            self.changed.notify_all()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def ended(self) -> bool:
        return bool(self.lines) and self.lines[-1] == ""

    def expect(self, fragment: str, timeout: float = 900) -> None:
        """Wait for a line with ``fragment`` (the timeout only bounds a failure)."""
        with self.changed:
            self.changed.wait_for(lambda: fragment in self.log or self.ended(), timeout)
        assert fragment in self.log, f"no {fragment!r} in:\n{self.log[-3000:]}"

    def finish(self) -> str:
        """Wait for the process to end (and its output to be read); check it succeeded."""
        self.proc.wait(timeout=900)
        with self.changed:
            self.changed.wait_for(self.ended, 60)
        assert self.proc.returncode == 0, f"client failed:\n{self.log[-3000:]}"
        return self.log


def run_clients(server: ServeProcess, mode: str, tmp_path, clients: int = CLIENTS, group="digits", steps=None):
    """Run ``clients`` client processes; the others first, client 0 (whose model starts the federation) last.

    Client 0 starts only once every other client has said it waits for it, so each waiting
    line is certain, whatever the machine's speed. ``steps``: (round steps, steps) of each client.
    Returns the final state dicts and the logs.
    """
    steps = steps or (ROUND_STEPS, STEPS)
    outputs = [tmp_path / f"client{i}.pt" for i in range(clients)]
    started = [ClientProcess(server, mode, i, clients, outputs[i], group, steps) for i in range(1, clients)]
    try:
        for client, process in enumerate(started, start=1):
            process.expect(f"client {client} waits for client(s) [0")
        started.insert(0, ClientProcess(server, mode, 0, clients, outputs[0], group, steps))
        logs = [process.finish() for process in started]
    finally:  # a failed or timed-out test leaves no client behind
        for process in started:
            if process.proc.poll() is None:
                process.proc.kill()
    return [torch.load(path) for path in outputs], logs


@pytest.fixture
def fed_server():
    server = ServeProcess("--model", "tests.models:DagNet", verbose=True)
    yield server
    server.stop()


def interleaved(turns: int) -> ConcatDataset:
    """The first ``turns`` turns of the interleaved stream: client 0's first 5 batches, client 1's, ..."""
    parts = []
    for turn in range(turns):
        client, round_ = turn % CLIENTS, turn // CLIENTS
        rows = range(round_ * ROUND_STEPS * BATCH, (round_ + 1) * ROUND_STEPS * BATCH)
        parts.append(torch.utils.data.Subset(shard(client, STEPS), list(rows)))
    return ConcatDataset(parts)


@pytest.mark.slow
def test_sequential_last_client_equals_local_training_on_the_interleaved_stream(fed_server, tmp_path):
    finals, _ = run_clients(fed_server, "sequential", tmp_path)
    for client in range(CLIENTS):
        turns = (ROUNDS - 1) * CLIENTS + client + 1  # the client's last turn ends the federation's turn number
        local = initial_model(0)  # client 0's initial weights are the federation's
        trainer(max_steps=turns * ROUND_STEPS).fit(local, DataLoader(interleaved(turns), batch_size=BATCH))
        reference = local.state_dict()
        for key, value in reference.items():
            torch.testing.assert_close(finals[client][key], value, atol=1e-5, rtol=0, msg=f"client {client}: {key}")
    server_log = "".join(fed_server.stderr)
    assert "federation digits: turn 5 (round 1) is client 2's" in server_log
    assert "waits: turn 0 (round 0), waiting for client 0" in server_log  # the server's log of its federation


def local_splitfed() -> list[dict[str, torch.Tensor]]:
    """FedAvg of 3 local trainings as SPEC 4b defines it: per-client SGD state, sample-weighted averages."""
    models = [initial_model(i) for i in range(CLIENTS)]
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())  # client 0's initial weights are the federation's
    optimizers = [torch.optim.SGD(m.parameters(), lr=m.hparams.lr, momentum=m.hparams.momentum) for m in models]
    batches = [list(DataLoader(shard(i, STEPS), batch_size=BATCH)) for i in range(CLIENTS)]
    for round_ in range(ROUNDS):
        samples = []
        for model, optimizer, data in zip(models, optimizers, batches):
            model.train()
            seen = 0
            for x, y in data[round_ * ROUND_STEPS : (round_ + 1) * ROUND_STEPS]:
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
                seen += len(x)
            samples.append(seen)
        states = [m.state_dict() for m in models]
        total = sum(samples)
        for key, value in states[0].items():
            if value.is_floating_point():
                average = sum(state[key] * (n / total) for state, n in zip(states, samples))
                for model in models:
                    model.state_dict()[key].copy_(average)
    return [copy.deepcopy(m.state_dict()) for m in models]


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
