"""``SplitStrategy``: split learning as a Lightning strategy.

The strategy is deliberately thin. On the module's first forward it traces the model on
that batch, connects to the server (or starts an embedded one), plans the cut (for
``cut="auto"``: node costs measured on both sides or estimated, the link measured over the
training connection) and starts a :class:`~lightning_split.runtime.device.SplitRuntime`; the
module's ``forward`` becomes a trampoline to the current runtime, so ``training_step`` and
everything around it run unchanged. It hooks where Lightning's own strategies do: optimizer
steps (a post-step hook), ``zero_grad``, gradient clipping (the precision plugin's clip
methods, so the global norm spans both sides), the checkpoint hooks
(``lightning_module_state_dict`` and ``optimizer_state`` fetch the server's half, so a
checkpoint is exactly that of the unsplit module) and the start of each training batch,
where a live re-plan (``replan_every``) moves the boundary when the measured link calls for it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry
from torch import nn

from lightning_split.graph.capture import TracedModel
from lightning_split.graph.programs import SplitSpec
from lightning_split.planning.profile import Link, Profile
from lightning_split.runtime.device import SplitRuntime
from lightning_split.runtime.placement import (
    EstimatedCosts,
    GivenCosts,
    MeasuredCosts,
    Placement,
    ProfileBuilder,
    link_text,
    place_model,
    trace_batch,
)
from lightning_split.serve.embedded import EmbeddedServer
from lightning_split.serve.host import ModelHost
from lightning_split.transport.client import ConnectionFailed, LinkEmulator, RemoteServer, Traffic
from lightning_split.transport.protocol import RemoteError

log = logging.getLogger("lightning_split")


@dataclass(frozen=True)
class Replan:
    """One live re-plan: what the link measured, and where the boundary was and went.

    Attributes:
        step: optimizer steps done when it happened.
        link: the link measured (or given) for it.
        old_cut, new_cut: the cut tensors before and after (``()``: everything on the device).
        old_predicted_s: predicted step time of the old placement on the new link.
        new_predicted_s: predicted step time of the chosen placement on the new link.
        moved: whether the boundary moved (state and optimizer state migrated).
        seconds: time the re-plan took (measuring, planning, migrating).
    """

    step: int
    link: Link
    old_cut: tuple[str, ...]
    new_cut: tuple[str, ...]
    old_predicted_s: float
    new_predicted_s: float
    moved: bool
    seconds: float

    def describe(self) -> str:
        what = "moved" if self.moved else "kept"
        return (
            f"re-plan at step {self.step} ({link_text(self.link)}): {what} the cut "
            f"{_cut_text(self.old_cut)} -> {_cut_text(self.new_cut)}, predicted step "
            f"{self.old_predicted_s * 1e3:.2f} ms -> {self.new_predicted_s * 1e3:.2f} ms, took {self.seconds:.3f} s"
        )


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
        retry_for: seconds to keep reconnecting (with backoff) after the connection drops; the
            session resumes where it was, each request applied exactly once (0: fail at once).
        link: an emulated link limit on the connection, ``"10mbit,20ms"``-style text (rate
            up[/down], round trip) or a ``Link``: every request and reply is delayed as such
            a link would delay it, so bandwidth-dependent behaviour shows on one machine.
            ``None``: the real link as it is. :meth:`set_link_limit` changes it while training.
        costs: where the node costs of ``cut="auto"`` come from: ``"measure"`` (timed on
            this device and by the server, cached on disk), ``"estimate"`` (FLOPs over
            assumed throughputs), or a ``Profile`` or profile file (its costs, matched by node
            name; a profile of another graph is an error).
        costs_options: options of the cost source: for ``"estimate"`` the keyword arguments
            of :class:`~lightning_split.runtime.placement.EstimatedCosts` (``device_gflops``,
            ``server_gflops``, ``backward_factor``, ``min_node_s``); for ``"measure"``
            ``warmup`` and ``repeats`` per node and ``cache`` (a directory, or ``False`` for
            no cache; default: :func:`lightning_split.costs.measure.default_cache_dir`).
        plan_link: the link to plan for, as text or ``Link``; ``None`` (the default) measures
            it over the training connection with ``ping`` payloads of ``probe_bytes``.
        probe_bytes: payload bytes of the link probes (default: the median size of the
            model's tensors, within the limits of :func:`lightning_split.costs.measure.measure_link`).
        probe_repeats: timed rounds per link measurement.
        replan_every: every this many optimizer steps, measure the link again and re-plan
            with the same node costs; when the optimal placement changes, the boundary moves
            before the next training batch (parameters, buffers and optimizer state of the
            nodes that change sides migrate). ``None``: plan once. Needs ``cut="auto"``.
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
        retry_for: float = 120.0,
        link: str | Link | None = None,
        costs: str | Path | Profile = "measure",
        costs_options: dict[str, Any] | None = None,
        plan_link: str | Link | None = None,
        probe_bytes: int | None = None,
        probe_repeats: int = 5,
        replan_every: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(device=device, **kwargs)
        if replan_every is not None and (not isinstance(replan_every, int) or replan_every < 1):
            raise ValueError(f"replan_every must be a positive number of optimizer steps or None, got {replan_every!r}")
        if replan_every is not None and cut != "auto":
            raise ValueError("replan_every needs cut='auto': a fixed cut has nothing to re-plan")
        if isinstance(costs, str | Path) and costs not in ("measure", "estimate") and not Path(costs).is_file():
            raise ValueError(f"costs={costs!r}: expected 'measure', 'estimate', a Profile or a profile file")
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
        self.retry_for = retry_for
        self.link = _as_link(link)
        self.costs = costs
        self.costs_options = dict(costs_options or {})
        self.plan_link = _as_link(plan_link)
        self.probe_bytes = probe_bytes
        self.probe_repeats = probe_repeats
        self.replan_every = replan_every
        self.runtime: SplitRuntime | None = None
        self.plan: Placement | None = None
        self.placements: list[SplitSpec] = []
        self.replans: list[Replan] = []
        self._remote: RemoteServer | None = None
        self._embedded: EmbeddedServer | None = None
        self._restore: list[Any] = []
        self._last_stats: Traffic | None = None
        self._steps_since_log = 0
        self._steps = 0
        self._replan_due = False
        self.last_traffic: dict[str, float] = {}

    def set_link_limit(self, link: str | Link | None) -> None:
        """Change the emulated link limit of the connection (``None``: no limit), also mid-training."""
        self.link = _as_link(link)
        if self._remote is not None:
            self._remote.emulator = LinkEmulator(self.link) if self.link is not None else None

    # -- Lightning hooks -------------------------------------------------------------------

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        module = self.lightning_module
        assert module is not None
        module.forward = functools.partial(self._forward, module)  # type: ignore[method-assign]
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

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Re-plan here when due: the last optimizer step is done and its gradients are spent."""
        super().on_train_batch_start(batch, batch_idx)
        if self._replan_due:
            self._replan_due = False
            self._replan()

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

    def _forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """The module's forward: a trampoline to the current runtime (re-planning replaces it)."""
        if self.runtime is None:
            self._start(module, args, kwargs)
        assert self.runtime is not None
        return self.runtime.forward(*args, **kwargs)

    def _start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        url = self.server_url
        if url is None:
            self._embedded = EmbeddedServer(ModelHost(_embedded_factory(module), _class_path(module)), token=self.token)
            url = self._embedded.url
        remote = RemoteServer(
            url,
            token=self.token,
            ca_file=self.ca_file,
            timeout=self.timeout,
            link_limit=self.link,
            retry_for=self.retry_for,
        )
        self._remote = remote
        batch = trace_batch(module, args, kwargs, self.leaf_modules)
        hello = {
            "model": self.model_name or _class_path(module),
            "init_args": self.init_args if self.init_args is not None else _init_args(module),
            **batch.hello_fields(),
        }
        link_started = time.perf_counter()
        self.plan = place_model(
            module,
            args,
            kwargs,
            cut=self.cut,
            leaf_modules=self.leaf_modules,
            pin_device=self.pin_device,
            pin_server=self.pin_server,
            link=self._planning_link,
            profile_builder=self._cost_source(hello, args, kwargs) if self.cut == "auto" else None,
            traced=batch,
            notes={"link": "given" if self.plan_link is not None else "measured"},
        )
        if self.cut == "auto":
            self.plan.notes["plan_s"] = time.perf_counter() - link_started
        log.info("lightning-split plan:\n%s", self.plan.describe())
        self.runtime = SplitRuntime(
            module,
            self.plan.graph_module,
            self.plan.spec,
            remote,
            hello,
            self.release_server_state,
            graph_args=self.plan.traced.graph_args,
        )
        self.runtime.open(self.optimizers)
        self.placements.append(self.plan.spec)
        self._log_plan()

    def _cost_source(self, hello: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> ProfileBuilder:
        """The profile builder ``costs`` asks for."""
        costs = self.costs
        if isinstance(costs, Profile) or (isinstance(costs, str | Path) and costs not in ("measure", "estimate")):
            return GivenCosts(costs)
        if costs == "estimate":
            return EstimatedCosts(**self.costs_options)
        from lightning_split.costs.measure import ProfileCache, Profiler
        from lightning_split.transport.optimizers import describe_optimizers

        options = dict(self.costs_options)
        cache = options.pop("cache", None)
        profiler = Profiler(
            cache=None if cache is False else ProfileCache(cache),
            device=self.root_device,
            **options,
        )
        assert self._remote is not None
        optimizers = describe_optimizers(self.lightning_module, self.optimizers)
        return MeasuredCosts(self._remote, hello, args, kwargs, profiler, optimizers)

    def _planning_link(self, traced: TracedModel) -> Link:
        """``plan_link`` if given, else the link measured over the training connection."""
        if self.plan_link is not None:
            return self.plan_link
        from lightning_split.costs.measure import MAX_PROBE_BYTES, MIN_PROBE_BYTES, measure_link, typical_payload_bytes

        assert self._remote is not None
        if self.probe_bytes is not None:
            size = low = high = int(self.probe_bytes)
        else:
            size, low, high = typical_payload_bytes(traced), MIN_PROBE_BYTES, MAX_PROBE_BYTES
        return measure_link(self._remote, size, size, self.probe_repeats, min_bytes=low, max_bytes=high)

    def _replan(self) -> None:
        """Measure the link, plan again on the same node costs, move the boundary if the optimum moved."""
        plan, runtime = self.plan, self.runtime
        if plan is None or runtime is None or plan.profile is None:
            return
        started = time.perf_counter()
        try:
            link = self._planning_link(plan.traced)
        except (ConnectionFailed, RemoteError) as exc:
            log.warning("lightning-split: no link measurement at step %d (%s); the placement stays", self._steps, exc)
            return
        new = plan.replanned(link)
        moved = new.spec.server_nodes != plan.spec.server_nodes
        if moved:
            self.runtime = runtime.moved_to(new.spec)
            self.placements.append(new.spec)
        self.plan = new
        record = Replan(
            step=self._steps,
            link=link,
            old_cut=plan.spec.cut if plan.spec.server_nodes else (),
            new_cut=new.spec.cut if new.spec.server_nodes else (),
            old_predicted_s=_predicted(new.profile, plan.spec),
            new_predicted_s=_predicted(new.profile, new.spec),
            moved=moved,
            seconds=time.perf_counter() - started,
        )
        self.replans.append(record)
        log.info("lightning-split %s", record.describe())
        self._log_metrics(
            {
                "split/replans": float(sum(r.moved for r in self.replans)),
                "split/predicted_step_s": record.new_predicted_s,
                "split/link_up_mbit_s": link.uplink_bytes_per_s * 8 / 1e6,
                "split/link_down_mbit_s": link.downlink_bytes_per_s * 8 / 1e6,
                "split/link_rtt_ms": link.rtt_s * 1e3,
            }
        )

    def _log_plan(self) -> None:
        trainer = getattr(self.lightning_module, "_trainer", None)
        if trainer is None or self.plan is None:
            return
        for logger in trainer.loggers:
            logger.log_hyperparams(self.plan.summary())

    def _log_metrics(self, metrics: dict[str, float]) -> None:
        trainer = getattr(self.lightning_module, "_trainer", None)
        if trainer is None:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _close_runtime(self) -> None:
        runtime, self.runtime = self.runtime, None
        remote, self._remote = self._remote, None
        try:
            if runtime is not None:
                runtime.close()
        finally:
            if remote is not None:
                remote.close()
            if self._embedded is not None:
                self._embedded.close()
                self._embedded = None

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.runtime is not None:
            self.runtime.after_step(optimizer)
            self._log_traffic()
            self._steps += 1
            if self.replan_every is not None and self._steps % self.replan_every == 0:
                self._replan_due = True

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


def _as_link(link: str | Link | None) -> Link | None:
    return Link.parse(link) if isinstance(link, str) else link


def _predicted(profile: Profile | None, spec: SplitSpec) -> float:
    """Predicted step time of the placement ``spec`` on ``profile``."""
    from lightning_split.planning import planner

    assert profile is not None
    server = set(spec.server_nodes)
    return planner.step_time(profile, [name for name in profile.names if name not in server]).total


def _cut_text(cut: tuple[str, ...]) -> str:
    return "[" + ", ".join(cut) + "]" if cut else "(device only)"


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
