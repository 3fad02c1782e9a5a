"""Federation tests' shared parts: client processes (``tests.fedclient``), bare sessions, the local references.

:class:`ClientProcess` runs one client and lets a test wait for its log lines; :func:`run_clients`
runs a whole federation; :func:`local_sequential` and :func:`local_splitfed` compute what
sequential and splitfed training must equal, locally; :func:`session`, :func:`join` and
:func:`wait` drive one session op by op; :func:`until_logged` waits for a server's log line.
"""

from __future__ import annotations

import copy
import threading
import time

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader

from lightning_split.graph.describe import ModelDescription
from lightning_split.runtime.device import SplitRuntime
from lightning_split.runtime.placement import place_model
from lightning_split.transport.client import RemoteServer
from lightning_split.transport.federation import FedJoin, FedWait
from tests import zygote
from tests.fedclient import BATCH, initial_model, shard
from tests.helpers import ROOT, ServeProcess, trainer
from tests.models import DagNet, digits

CLIENTS, ROUND_STEPS, ROUNDS = 3, 5, 2
STEPS = ROUND_STEPS * ROUNDS


class ClientProcess:
    """One ``tests.fedclient`` process; :meth:`expect` blocks until it has printed a line containing a fragment."""

    def __init__(
        self,
        server: ServeProcess,
        mode: str,
        client: int,
        clients: int,
        out,
        group: str,
        steps=(ROUND_STEPS, STEPS),
        extra=(),
    ) -> None:
        argv = ["-m", "tests.fedclient", server.url, mode, str(client), str(clients)]
        argv += [str(steps[0]), str(steps[1]), str(out), group, *extra]
        self.proc = zygote.shared().spawn(argv, cwd=ROOT, env=server.env, merge_stderr=True)
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


def run_clients(
    server: ServeProcess, mode: str, tmp_path, clients: int = CLIENTS, group="digits", steps=None, during=None, extra=()
):
    """Run ``clients`` client processes; the others first, client 0 (whose model starts the federation) last.

    Client 0 starts only once every other client has said it waits for it, so each waiting
    line is certain, whatever the machine's speed. ``steps``: (round steps, steps) of each client;
    ``during``: called once all have started (a fault to inject), before waiting for them to end;
    ``extra``: more arguments for every client (``tests.fedclient``'s).
    Returns the final state dicts and the logs.
    """
    steps = steps or (ROUND_STEPS, STEPS)
    outputs = [tmp_path / f"client{i}.pt" for i in range(clients)]
    started = [ClientProcess(server, mode, i, clients, outputs[i], group, steps, extra) for i in range(1, clients)]
    try:
        for client, process in enumerate(started, start=1):
            process.expect(f"client {client} waits for client(s) [0")
        started.insert(0, ClientProcess(server, mode, 0, clients, outputs[0], group, steps, extra))
        if during is not None:
            during()
        logs = [process.finish() for process in started]
    finally:  # a failed or timed-out test leaves no client behind
        for process in started:
            if process.proc.poll() is None:
                process.proc.kill()
    return [torch.load(path) for path in outputs], logs


def interleaved(turns: int) -> ConcatDataset:
    """The first ``turns`` turns of the interleaved stream: client 0's first 5 batches, client 1's, ..."""
    parts = []
    for turn in range(turns):
        client, round_ = turn % CLIENTS, turn // CLIENTS
        rows = range(round_ * ROUND_STEPS * BATCH, (round_ + 1) * ROUND_STEPS * BATCH)
        parts.append(torch.utils.data.Subset(shard(client, STEPS), list(rows)))
    return ConcatDataset(parts)


def local_sequential(client: int, **model_kwargs) -> dict[str, torch.Tensor]:
    """Client ``client``'s final model in the sequential federation: local training up to the end of its last turn."""
    turns = (ROUNDS - 1) * CLIENTS + client + 1  # the client's last turn ends the federation's turn number
    local = initial_model(0, **model_kwargs)  # client 0's initial weights are the federation's
    trainer(max_steps=turns * ROUND_STEPS).fit(local, DataLoader(interleaved(turns), batch_size=BATCH))
    return local.state_dict()


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


# -- bare sessions, driven op by op (the ops a FederatedRun sends) ------------------------


def session(url: str, cut: str = "stem", **init_args) -> RemoteServer:
    """A DagNet session cut at ``cut`` on ``url``; its connection, ready for federation ops."""
    torch.manual_seed(0)
    model = DagNet(**init_args)
    images = digits(32).tensors[0]
    plan = place_model(model, (images,), {}, cut=cut)
    hello = ModelDescription.of("tests.models:DagNet", dict(model.hparams), plan.traced, plan.example).to_wire()
    runtime = SplitRuntime(model, plan.graph_module, plan.spec, RemoteServer(url, retry_for=0), hello)
    runtime.open([torch.optim.SGD(model.parameters(), lr=0.1)])
    return runtime.remote


def join(remote: RemoteServer, group: str, client: int, clients: int = 2, mode: str = "sequential", timeout=60.0):
    op = FedJoin(group=group, clients=clients, client=client, mode=mode, round_steps=1, timeout=timeout)
    return remote.call([op])[0]


def wait(remote: RemoteServer, round_: int = 0):
    """``fed_wait`` until ready, as the device does: returns the ready reply."""
    while True:
        (reply,) = remote.call([FedWait(round=round_)])
        if reply.ready:
            return reply


def until_logged(server: ServeProcess, fragment: str, timeout: float = 600, count: int = 1) -> list[str]:
    """Wait until ``server`` logged ``count`` lines with ``fragment``; return them (the timeout bounds a failure)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in list(server.stderr) if fragment in line]
        if len(lines) >= count:
            return lines
        assert server.proc.poll() is None, f"the server ended before logging {fragment!r}"
        assert time.monotonic() < deadline, f"no {fragment!r} in:\n{''.join(server.stderr)[-3000:]}"
        time.sleep(0.02)
