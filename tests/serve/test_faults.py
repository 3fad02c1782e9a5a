"""Faults: dropped connections and a killed server leave training exactly as if nothing happened."""

from __future__ import annotations

import signal
import socket
import threading
import time

import lightning as L
import pytest
import torch

from lightning_split import SplitStrategy
from tests.faultproxy import FaultProxy
from tests.helpers import ServeProcess, assert_same_parameters, trainer

pytestmark = pytest.mark.slow


def _local_and_copy(model_kwargs):
    import copy

    from tests.models import DagNet, loader

    torch.manual_seed(0)
    local = DagNet(**model_kwargs)
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer().fit(local, loader())
    return local, split, loader


class AtBatches(L.Callback):
    """Runs ``action`` at given batch indices, at one hook ('start', 'before_backward' or 'end')."""

    def __init__(self, hook: str, batches: dict[int, object]) -> None:
        self.hook, self.batches = hook, batches
        self.done: list[int] = []

    def _maybe(self, hook: str, batch_idx: int) -> None:
        if hook == self.hook and batch_idx in self.batches and batch_idx not in self.done:
            self.done.append(batch_idx)
            self.batches[batch_idx]()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._maybe("start", batch_idx)

    def on_before_backward(self, trainer, module, loss):
        self._maybe("before_backward", trainer.fit_loop.epoch_loop.batch_idx)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._maybe("end", batch_idx)


def _client_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lightning_split.transport.client"]


def test_dropped_connections_mid_step_are_retried_exactly_once(dagnet_server, caplog):
    """Cut the connection before a request reaches the server, and after the server answered."""
    model_kwargs = {"optimizer": "adam", "lr": 0.01, "scheduler": True}
    local, split, loader = _local_and_copy(model_kwargs)
    proxy = FaultProxy(int(dagnet_server.url.rsplit(":", 1)[1]))
    try:
        cuts = [
            AtBatches("start", {3: proxy.drop_next_request, 11: proxy.drop_next_request}),
            AtBatches("before_backward", {6: proxy.drop_next_reply, 15: proxy.drop_next_reply}),
        ]
        strategy = SplitStrategy(server=proxy.url, cut="b")
        torch.manual_seed(1)
        trainer(strategy, callbacks=cuts).fit(split, loader())
    finally:
        proxy.close()
    assert proxy.cuts == 4
    assert sum("reconnecting" in m for m in _client_warnings(caplog)) >= 4
    assert strategy.runtime is None  # closed at the end of fit, after fetching the state
    assert_same_parameters(local, split)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_killed_and_restarted_with_state_dir_resumes_exactly(tmp_path, caplog):
    """SIGKILL the server twice mid-training; a new one on the same --state-dir takes over."""
    port = _free_port()
    args = ("--model", "tests.models:DagNet", "--port", str(port), "--state-dir", str(tmp_path / "state"))
    servers = [ServeProcess(*args)]
    restarted = []

    def kill_and_restart(delay: float) -> None:
        servers[-1].proc.send_signal(signal.SIGKILL)
        servers[-1].proc.wait()

        def start() -> None:
            time.sleep(delay)  # the device retries with backoff meanwhile
            servers.append(ServeProcess(*args))
            restarted.append(time.monotonic())

        thread = threading.Thread(target=start)
        thread.start()
        if delay == 0:
            thread.join()

    model_kwargs = {"optimizer": "sgd", "momentum": 0.9, "dropout": 0.3}
    local, split, loader = _local_and_copy(model_kwargs)
    try:
        kills = [
            AtBatches("before_backward", {5: lambda: kill_and_restart(0.5)}),  # forward done, backward lost
            AtBatches("end", {13: lambda: kill_and_restart(0.0)}),  # step deferred, not yet sent
        ]
        strategy = SplitStrategy(server=f"ws://127.0.0.1:{port}", cut="b")
        torch.manual_seed(1)
        trainer(strategy, callbacks=kills).fit(split, loader())
    finally:
        for server in servers:
            server.stop()
    assert len(restarted) == 2 and len(servers) == 3
    replays = [m for m in _client_warnings(caplog) if "restored the session" in m]
    assert len(replays) == 2, _client_warnings(caplog)
    assert_same_parameters(local, split)
    assert not list((tmp_path / "state").glob("*.lsw")), "a closed session's state file must be deleted"


def test_idle_connection_closed_by_server_resumes_transparently(caplog):
    server = ServeProcess("--model", "tests.models:DagNet", "--idle-timeout", "0.3", verbose=True)
    local, split, loader = _local_and_copy({"optimizer": "sgd"})

    def until_the_server_closed_the_idle_connection() -> None:
        deadline = time.monotonic() + 120  # an event to wait for, not a duration to guess: see the log line
        while not any("idle for 0.3 s" in line for line in server.stderr):
            assert time.monotonic() < deadline, "the server never closed the idle connection"
            time.sleep(0.05)

    try:
        pause = AtBatches("before_backward", {4: until_the_server_closed_the_idle_connection})
        torch.manual_seed(1)
        trainer(SplitStrategy(server=server.url, cut="b"), callbacks=[pause]).fit(split, loader())
    finally:
        server.stop()
    assert pause.done == [4]
    assert_same_parameters(local, split)
    assert any("idle for 0.3 s" in m for m in _client_warnings(caplog)), _client_warnings(caplog)
