"""Helpers shared by the tests: a real ``serve`` process, a quiet Trainer, split-vs-local comparisons.

Test files import these from here (never from another test file), and ``conftest.py`` builds
its fixtures on them.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger

from tests import zygote

if TYPE_CHECKING:
    from lightning_split.runtime.device import SplitRuntime

ROOT = Path(__file__).resolve().parent.parent
STEPS = 20


class ServeProcess:
    """A `lightning-split serve` child process; `url` is what it printed it listens on.

    The process is forked from the run's zygote (:mod:`tests.zygote`: a separate process
    running ``python -m lightning_split.cli serve ...`` with torch and Lightning already
    imported), unless ``fresh_interpreter=True`` (or ``LIGHTNING_SPLIT_TEST_FRESH=1`` in the
    environment, for the whole run) starts a new interpreter. With
    ``verbose=True`` the server logs its progress (sessions opened and closed, idle connections
    closed) to stderr, which :attr:`stderr` collects line by line.
    """

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, verbose: bool = False, fresh_interpreter: bool = False
    ) -> None:
        flags = ["--verbose"] if verbose else []
        argv = ["-m", "lightning_split.cli", *flags, "serve", "--port", "0", *args]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        if fresh_interpreter or os.environ.get("LIGHTNING_SPLIT_TEST_FRESH"):
            pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
            self.proc: Any = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=self.env, **pipes)
        else:
            self.proc = zygote.shared().spawn(argv, cwd=ROOT, env=self.env)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {''.join(self.stderr)}")
        self.url = line.split()[-1]

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_python(
    argv: list[str], cwd: str | Path = ROOT, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python ARGV...`` (a script or ``-m module``) as a process forked from the run's zygote, run to its end.

    Like ``subprocess.run(..., capture_output=True, text=True)``; ``env`` defaults to this
    environment with the checkout on ``PYTHONPATH``.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if env is None else env
    child = zygote.shared().spawn([str(a) for a in argv], cwd=cwd, env=env)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        raise
    return subprocess.CompletedProcess([sys.executable, *argv], child.returncode or 0, out, err)


def trainer(strategy: Any = None, **kwargs: Any) -> L.Trainer:
    """A deterministic CPU Trainer of ``STEPS`` steps with no logger, checkpoints or progress bar."""
    options: dict[str, Any] = dict(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    options.update(kwargs)
    if strategy is not None:
        options["strategy"] = strategy
    return L.Trainer(**options)


def fit_pair(model_kwargs: dict, trainer_kwargs: dict, server: str | None, cut: Any = "b"):
    """Train a DagNet locally and a copy of it split at ``cut``, from the same seeds."""
    from lightning_split import SplitStrategy
    from tests.models import DagNet, loader

    torch.manual_seed(0)
    local = DagNet(**model_kwargs)
    split = copy.deepcopy(local)
    torch.manual_seed(1)
    trainer(**trainer_kwargs).fit(local, loader())
    strategy = SplitStrategy(server=server, cut=cut)
    torch.manual_seed(1)
    trainer(strategy, **trainer_kwargs).fit(split, loader())
    return local, split, strategy


def assert_same_parameters(local: torch.nn.Module, split: torch.nn.Module, atol: float = 1e-5) -> None:
    """Every state-dict entry of ``split`` equals ``local``'s within ``atol``."""
    local_state, split_state = local.state_dict(), split.state_dict()
    assert local_state.keys() == split_state.keys()
    for key, value in local_state.items():
        assert split_state[key].shape == value.shape, key
        torch.testing.assert_close(split_state[key], value, atol=atol, rtol=0, msg=f"{key} differs")


class MemoryLogger(Logger):
    """A Lightning logger that keeps what it is given, to check what the strategy logs."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.hparams: dict = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.hparams.update(dict(params))

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))


def open_session(url: str) -> tuple[SplitRuntime, torch.Tensor, list[tuple[int, ...]]]:
    """A session on ``url`` for a DagNet cut at ``b``: its runtime, a batch of digits and the cut shapes."""
    from lightning_split.graph.describe import ModelDescription
    from lightning_split.graph.metadata import decode
    from lightning_split.runtime.device import SplitRuntime
    from lightning_split.runtime.placement import place_model
    from lightning_split.transport.client import RemoteServer
    from tests.models import DagNet, digits

    torch.manual_seed(0)
    model = DagNet()
    images = digits(32).tensors[0]
    plan = place_model(model, (images,), {}, cut="b")
    hello = ModelDescription.of("tests.models:DagNet", dict(model.hparams), plan.traced, plan.example).to_wire()
    runtime = SplitRuntime(
        model, plan.graph_module, plan.spec, RemoteServer(url), hello, graph_args=plan.traced.graph_args
    )
    runtime.open([torch.optim.SGD(model.parameters(), lr=0.1)])
    cut_shapes = [decode(plan.traced.node(name).out_meta).shape for name in plan.spec.cut]
    return runtime, images, cut_shapes
