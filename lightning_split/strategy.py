"""``SplitStrategy``: split learning as a Lightning strategy.

The strategy is deliberately thin. On the module's first forward it traces the model on
that batch, plans the cut, connects to the server (or starts an embedded one) and installs
a :class:`~lightning_split.runtime.SplitRuntime` as the module's ``forward``; from then on
``training_step`` and everything around it run unchanged. It hooks where Lightning's own
strategies do: optimizer steps (a post-step hook), ``zero_grad``, gradient clipping (the
precision plugin's clip methods, so the global norm spans both sides), and the checkpoint
hooks (``lightning_module_state_dict`` and ``optimizer_state`` fetch the server's half, so
a checkpoint is exactly that of the unsplit module).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry
from torch import nn

from lightning_split.client import RemoteServer, Traffic
from lightning_split.plans import SplitPlan, make_plan
from lightning_split.runtime import SplitRuntime
from lightning_split.server import EmbeddedServer, ModelHost

log = logging.getLogger("lightning_split")


class SplitStrategy(SingleDeviceStrategy):
    """Train a LightningModule split between this device and a lightning-split server.

    Args:
        server: ``ws://host:port`` (or ``wss://``) of ``lightning-split serve``; ``None``
            starts an embedded server in this process on loopback.
        cut: ``"auto"`` plans the cut from a cost profile; a node name or module path
            (``"layer2"``) or a list of them puts those nodes and their ancestors on the
            device and the rest on the server.
        token: bearer token for the server (default: ``LIGHTNING_SPLIT_TOKEN``).
        ca_file: CA bundle to verify a ``wss://`` server.
        device: this side's torch device.
        model: ``pkg.module:Class`` the server imports (default: the module's own class path).
        init_args: the module's constructor arguments for the server (default: its hparams).
        leaf_modules: module paths or classes to trace as single nodes.
        pin_device, pin_server: node names the planner must keep on one side.
        release_server_state: free this process's copies of the server's parameters and
            buffers during training (they come back for checkpoints and at the end).
        timeout: seconds to wait for any reply from the server.
        link: planning link as ``"10mbit,20ms"``-style text (default: measured).
    """

    strategy_name = "split"

    def __init__(
        self,
        server: str | None = None,
        cut: str | Sequence[str] = "auto",
        token: str | None = None,
        ca_file: str | None = None,
        device: str | torch.device = "cpu",
        model: str | None = None,
        init_args: dict[str, Any] | None = None,
        leaf_modules: Sequence[str | type] = (),
        pin_device: Sequence[str] = (),
        pin_server: Sequence[str] = (),
        release_server_state: bool = True,
        timeout: float = 300.0,
        link: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(device=device, **kwargs)
        self.server_url = server
        self.cut = cut
        self.token = token
        self.ca_file = ca_file
        self.model_name = model
        self.init_args = init_args
        self.leaf_modules = tuple(leaf_modules)
        self.pin_device = tuple(pin_device)
        self.pin_server = tuple(pin_server)
        self.release_server_state = release_server_state
        self.timeout = timeout
        self.link = link
        self.runtime: SplitRuntime | None = None
        self.plan: SplitPlan | None = None
        self._embedded: EmbeddedServer | None = None
        self._restore: list[Any] = []
        self._last_stats: Traffic | None = None
        self._steps_since_log = 0
        self.last_traffic: dict[str, float] = {}

    # -- Lightning hooks -------------------------------------------------------------------

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        module = self.lightning_module
        assert module is not None
        module.forward = functools.partial(self._first_forward, module)  # type: ignore[method-assign]
        self._restore.append(lambda: module.__dict__.pop("forward", None))
        plugin = self.precision_plugin
        plugin.clip_grad_by_norm = self._clip_grad_by_norm  # type: ignore[method-assign]
        plugin.clip_grad_by_value = self._clip_grad_by_value  # type: ignore[method-assign]
        self._restore.append(
            lambda: [plugin.__dict__.pop(n, None) for n in ("clip_grad_by_norm", "clip_grad_by_value")]
        )
        for optimizer in self.optimizers:
            handle = optimizer.register_step_post_hook(self._after_step)
            self._restore.append(handle.remove)
        for holder in [*self.optimizers, *self._lightning_optimizers]:
            raw = getattr(holder, "_optimizer", holder)
            original = type(raw).zero_grad
            holder.zero_grad = functools.partial(self._zero_grad, raw, original)
            self._restore.append(functools.partial(holder.__dict__.pop, "zero_grad", None))

    def teardown(self) -> None:
        try:
            self._close_runtime()
        finally:
            while self._restore:
                self._restore.pop()()
            super().teardown()

    def on_exception(self, exception: BaseException) -> None:
        try:
            self._close_runtime()
        except Exception as exc:  # the original exception matters more
            log.warning("lightning-split: could not fetch the server's state after an error: %s", exc)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The unsplit module's state dict: the server's tensors are fetched first."""
        runtime = self.runtime
        if runtime is None or not runtime.is_split:
            return super().lightning_module_state_dict()
        runtime.pull_state()
        try:
            return super().lightning_module_state_dict()
        finally:
            if runtime.release_server_state:
                runtime.release()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state over both sides, indexed like the unsplit optimizer's."""
        if self.runtime is None or not self.runtime.is_split:
            return super().optimizer_state(optimizer)
        return self.runtime.optimizer_state_dict(getattr(optimizer, "_optimizer", optimizer))

    # -- the split -------------------------------------------------------------------------

    def _first_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.runtime is None:
            self._start(module, args, kwargs)
        assert self.runtime is not None
        module.forward = self.runtime.forward  # type: ignore[method-assign]
        return self.runtime.forward(*args, **kwargs)

    def _start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        url = self.server_url
        if url is None:
            self._embedded = EmbeddedServer(ModelHost(_embedded_factory(module), _class_path(module)), token=self.token)
            url = self._embedded.url
        remote = RemoteServer(url, token=self.token, ca_file=self.ca_file, timeout=self.timeout)
        self.plan = make_plan(
            module,
            args,
            kwargs,
            cut=self.cut,
            leaf_modules=self.leaf_modules,
            pin_device=self.pin_device,
            pin_server=self.pin_server,
            link=self.link,
        )
        log.info("lightning-split plan:\n%s", self.plan.describe())
        hello = {
            "model": self.model_name or _class_path(module),
            "init_args": self.init_args if self.init_args is not None else _init_args(module),
            **self.plan.hello_fields(),
        }
        self.runtime = SplitRuntime(
            module,
            self.plan.graph_module,
            self.plan.spec,
            remote if self.plan.spec.server_nodes else None,
            hello,
            self.release_server_state,
            graph_args=self.plan.traced.graph_args,
        )
        self.runtime.open(self.optimizers)
        self._log_plan()

    def _log_plan(self) -> None:
        trainer = getattr(self.lightning_module, "_trainer", None)
        if trainer is None or self.plan is None:
            return
        for logger in trainer.loggers:
            logger.log_hyperparams(self.plan.summary())

    def _close_runtime(self) -> None:
        runtime, self.runtime = self.runtime, None
        try:
            if runtime is not None:
                runtime.close()
        finally:
            if self._embedded is not None:
                self._embedded.close()
                self._embedded = None

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.runtime is not None:
            self.runtime.after_step(optimizer)
            self._log_traffic()

    def _log_traffic(self) -> None:
        """Per-step traffic and timing of the split, averaged since the last log, to every logger."""
        runtime = self.runtime
        trainer = getattr(self.lightning_module, "_trainer", None)
        if runtime is None or not runtime.is_split or trainer is None:
            return
        self._steps_since_log += 1
        every = max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1))
        if self._steps_since_log < every and self._last_stats is not None:
            return
        now = runtime.stats.snapshot()
        delta, steps = now.since(self._last_stats or Traffic()), self._steps_since_log
        metrics = {
            "split/bytes_up": delta.bytes_up / steps,
            "split/bytes_down": delta.bytes_down / steps,
            "split/remote_s": delta.round_trip_s / steps,
            "split/server_compute_s": delta.server_compute_s / steps,
        }
        metrics["split/wire_s"] = max(0.0, metrics["split/remote_s"] - metrics["split/server_compute_s"])
        self._last_stats, self._steps_since_log = now, 0
        self.last_traffic = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _zero_grad(self, raw: torch.optim.Optimizer, original: Any, set_to_none: bool = True) -> None:
        original(raw, set_to_none=set_to_none)
        if self.runtime is not None:
            self.runtime.zero_grad(raw, set_to_none)

    def _clip_grad_by_norm(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        if self.runtime is None:
            torch.nn.utils.clip_grad_norm_(self.precision_plugin.main_params(optimizer), clip_val)
        else:
            self.runtime.clip_grad_norm(optimizer, float(clip_val))

    def _clip_grad_by_value(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        if self.runtime is None:
            torch.nn.utils.clip_grad_value_(self.precision_plugin.main_params(optimizer), clip_val)
        else:
            self.runtime.clip_grad_value(optimizer, float(clip_val))

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="split learning over websockets")


def _class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


def _init_args(module: nn.Module) -> dict[str, Any]:
    hparams = getattr(module, "hparams", None)
    return dict(hparams) if hparams else {}


def _embedded_factory(module: nn.Module) -> Any:
    """The embedded server's model: a fresh instance from hparams, else a copy without the trainer."""
    import copy

    def factory(init_args: Any) -> nn.Module:
        try:
            return type(module)(**dict(init_args))
        except TypeError:
            skip = [getattr(module, "_trainer", None), module.__dict__.get("forward")]
            copied = copy.deepcopy(module, {id(obj): None for obj in skip if obj is not None})
            copied.__dict__.pop("forward", None)
            copied._trainer = None
            return copied

    return factory


StrategyRegistry.register(SplitStrategy.strategy_name, SplitStrategy, description="split learning over websockets")
