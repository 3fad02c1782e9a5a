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

What happens in those hooks has its own modules: :mod:`~lightning_split.runtime.placement`
(tracing and planning), :mod:`~lightning_split.runtime.device` (the split forward, backward and
optimizer mirroring), :mod:`~lightning_split.runtime.replan` (the link to plan for and live
re-planning) and :mod:`~lightning_split.runtime.metrics` (what goes to the loggers).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry
from torch import nn
from typing_extensions import override

from lightning_split.costs.sources import ProfileBuilder, cost_source
from lightning_split.graph.describe import ModelDescription
from lightning_split.graph.programs import SplitSpec
from lightning_split.planning.energy import OBJECTIVES, EnergyModel
from lightning_split.planning.profile import Link, Profile
from lightning_split.runtime.device import SplitRuntime
from lightning_split.runtime.federation import FederatedRun, Federation
from lightning_split.runtime.metrics import TrafficLog, log_hyperparams, log_metrics, replan_metrics
from lightning_split.runtime.microbatch import (
    PROFILED_MICRO_BATCHES,
    MicroBatching,
    check_micro_batches,
    choose_micro_batches,
    micro_batching_for,
)
from lightning_split.runtime.options import PlanOptions
from lightning_split.runtime.placement import Placement, place_model, trace_batch
from lightning_split.runtime.precision import bridge_scaler
from lightning_split.runtime.replan import LinkProbe, Replan, Replanner
from lightning_split.serve.embedded import EmbeddedServer
from lightning_split.serve.host import ModelHost
from lightning_split.transport.client import LinkEmulator, RemoteServer

__all__ = ["Replan", "SplitStrategy"]

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
            of :class:`~lightning_split.costs.sources.EstimatedCosts` (``device`` and ``server``
            hardware presets, ``{"device": "jetson-nano", "server": "t4"}``, costed by their
            roofline; or ``device_gflops``, ``server_gflops``, ``backward_factor``,
            ``min_node_s``); for ``"measure"``
            ``warmup`` and ``repeats`` per node and ``cache`` (a directory, or ``False`` for
            no cache; default: :func:`lightning_split.costs.measure.default_cache_dir`).
        plan_link: the link to plan for, as text or ``Link``; ``None`` (the default) measures
            it over the training connection with ``ping`` payloads of ``probe_bytes``.
        probe_bytes: payload bytes of the link probes (default: the median size of the
            model's tensors, within the limits of :func:`lightning_split.costs.measure.measure_link`).
        probe_repeats: timed rounds per link measurement.
        replan_every: every this many optimizer steps, measure the link again and re-plan
            with the same node costs; when the optimal placement changes, the boundary moves
            before the next training batch (the server part's parameters, buffers and optimizer
            state migrate), if the move pays (``replan_horizon``). ``None``: plan once. Needs ``cut="auto"``.
        replan_horizon: a move is made only when the predicted step time it saves over this many
            steps exceeds its predicted migration time (the state sent each way over the
            measured link). ``None`` (the default): ``replan_every``, the steps until the next
            re-plan; ``math.inf``: every move that saves time is made, whatever it migrates.
        micro_batches: cut every batch into this many micro-batches along dimension 0
            (``torch.tensor_split``: sizes differ by at most one sample) and pipeline them: the
            device computes micro-batch ``i + 1`` while ``i`` is on the wire and ``i - 1`` on the
            server, in the forward and in the backward phase; ``training_step`` still sees one
            forward with the whole batch's outputs. From 1 (the default: one request per
            forward) to 16, or ``"auto"``: the M of least predicted step time (the cost model's
            pipelined step, ``docs/cost-model.md``), 1 for a model that is not per-sample. For
            models whose layers treat samples independently training equals training on whole
            batches (float summation order aside); a model with BatchNorm in training mode,
            dropout, or any node not provably per-sample is refused before the first step.
        micro_batch_statistics: let such a model train on micro-batches anyway, each with its
            own BatchNorm statistics and random stream, as GPipe does. Training then differs
            from training on whole batches.
        codec: how the tensors that cross the cut are written, both ways (activations and
            outputs, their gradients): ``"none"`` (exact), or the lossy ``"fp16"``, ``"bf16"``,
            ``"int8"`` (or one registered with :func:`lightning_split.register_codec`). The
            planner scales the crossing bytes by the codec's ratio.
        private_inputs: keep the model's inputs, and anything computed from them without a
            device-side parameter, off the wire (the default); a ``cut`` that would send one is
            refused before the first step. ``False`` lifts the constraint.
        device_memory: the device part's training footprint (parameters, gradients, optimizer
            state, saved activations) must fit: bytes or text like ``"2GB"``; ``None``: no budget.
        objective: what ``cut="auto"`` minimises: ``"time"`` (the step time) or ``"energy"``
            (the device's joules per step: its preset's power over its compute and waiting,
            plus the radio's energy per byte; :mod:`lightning_split.planning.energy`).
        energy: the device's power and radio
            (:class:`~lightning_split.planning.energy.EnergyModel`, e.g.
            ``EnergyModel.for_device("raspberry-pi-4", "lte")``); default: the device preset of
            ``costs_options``, else an assumed Jetson Nano over Wi-Fi.
        federation: make this device one client of a federation that trains one model through
            the server (:class:`~lightning_split.runtime.federation.Federation`: sequential
            turns or SplitFed rounds); every client must use the same model and cut.
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
        replan_horizon: float | None = None,
        micro_batches: int | str = 1,
        micro_batch_statistics: bool = False,
        codec: str = "none",
        private_inputs: bool = True,
        device_memory: int | str | None = None,
        objective: str = "time",
        energy: EnergyModel | None = None,
        federation: Federation | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(device=device, **kwargs)
        self.micro_batches_requested = check_micro_batches(micro_batches)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if replan_every is not None and (not isinstance(replan_every, int) or replan_every < 1):
            raise ValueError(f"replan_every must be a positive number of optimizer steps or None, got {replan_every!r}")
        if replan_every is not None and cut != "auto":
            raise ValueError("replan_every needs cut='auto': a fixed cut has nothing to re-plan")
        if replan_horizon is not None and not (isinstance(replan_horizon, int | float) and replan_horizon > 0):
            raise ValueError(
                f"replan_horizon must be a positive number of steps (math.inf: every move), got {replan_horizon!r}"
            )
        if federation is not None and replan_every is not None:
            raise ValueError("a federation trains every client on one placement: drop replan_every, or the federation")
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
        self._timed_micro_batches = 1  # set when fit starts: the micro-batches measured costs also time
        self.plan_link = _as_link(plan_link)
        self.probe_bytes = probe_bytes
        self.probe_repeats = probe_repeats
        self.replan_every = replan_every
        self.micro_batch_statistics = micro_batch_statistics
        #: the number of micro-batches in use (``"auto"`` resolves on the first forward)
        self.micro_batches = micro_batches if isinstance(micro_batches, int) else 1
        self.options = PlanOptions.of(codec, private_inputs, device_memory)
        self.objective = objective
        self.energy = energy
        self.runtime: SplitRuntime | None = None
        self.plan: Placement | None = None
        self.placements: list[SplitSpec] = []
        self.replan_horizon = replan_horizon
        self._replanner = Replanner(replan_every, LinkProbe(self.plan_link, probe_bytes, probe_repeats), replan_horizon)
        self._traffic = TrafficLog()
        self._remote: RemoteServer | None = None
        self._embedded: EmbeddedServer | None = None
        self._restore: list[Any] = []
        self.federation = federation
        self._federated = FederatedRun(federation) if federation is not None else None

    @property
    def replans(self) -> list[Replan]:
        """The live re-plans done, in order."""
        return self._replanner.replans

    @property
    def last_traffic(self) -> dict[str, float]:
        """The per-step traffic metrics logged last (empty before the first log)."""
        return self._traffic.last

    def set_link_limit(self, link: str | Link | None) -> None:
        """Change the emulated link limit of the connection (``None``: no limit), also mid-training."""
        self.link = _as_link(link)
        if self._remote is not None:
            self._remote.emulator = LinkEmulator(self.link) if self.link is not None else None

    # -- Lightning hooks -------------------------------------------------------------------

    @override
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
        if getattr(plugin, "scaler", None) is not None:
            self._restore.append(bridge_scaler(plugin.scaler, self._unscale_server_grads))
        for optimizer in self.optimizers:
            handle = optimizer.register_step_post_hook(self._after_step)
            self._restore.append(handle.remove)
        for holder in [*self.optimizers, *self._lightning_optimizers]:
            raw = getattr(holder, "_optimizer", holder)
            original = type(raw).zero_grad
            holder.zero_grad = functools.partial(self._zero_grad, raw, original)
            self._restore.append(functools.partial(holder.__dict__.pop, "zero_grad", None))

    @override
    def teardown(self) -> None:
        try:
            if self._federated is not None and self.runtime is not None:
                self._federated.finish()
            self._close_runtime()
        finally:
            while self._restore:
                self._restore.pop()()
            super().teardown()

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Re-plan here when due: the last optimizer step is done and its gradients are spent."""
        super().on_train_batch_start(batch, batch_idx)
        if self._replanner.take_due():
            self._replan()
        if self._federated is not None:
            self._federated.before_batch(batch)

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        output = super().training_step(*args, **kwargs)
        if self._federated is not None:
            self._federated.record_loss(output)
        return output

    @override
    def on_exception(self, exception: BaseException) -> None:
        try:
            self._close_runtime()
        except Exception as exc:  # the original exception matters more
            log.warning("lightning-split: could not fetch the server's state after an error: %s", exc)

    @override
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

    @override
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
        batch = trace_batch(module, args, kwargs, self.leaf_modules)
        micro_batching = micro_batching_for(batch.traced, self.micro_batches_requested, self.micro_batch_statistics)
        self._timed_micro_batches = (
            min(micro_batching.micro_batches, PROFILED_MICRO_BATCHES)
            if self.micro_batches_requested == "auto"
            else micro_batching.micro_batches
        )
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
        description = ModelDescription.of(
            self.model_name or _class_path(module),
            self.init_args if self.init_args is not None else _init_args(module),
            batch.traced,
            batch.example,
        )
        link_started = time.perf_counter()
        self.plan = place_model(
            module,
            args,
            kwargs,
            cut=self.cut,
            leaf_modules=self.leaf_modules,
            pin_device=self.pin_device,
            pin_server=self.pin_server,
            link=lambda traced: self._replanner.probe.link(remote, traced),
            profile_builder=self._cost_source(description, args, kwargs) if self.cut == "auto" else None,
            traced=batch,
            notes={"link": "given" if self.plan_link is not None else "measured"},
            options=self.options.for_optimizers(self.optimizers).for_micro_batches(
                self.micro_batches_requested, micro_batching.micro_batches
            ),
            objective=self.objective,
            energy=self.energy,
        )
        if self.cut == "auto":
            self.plan.notes["plan_s"] = time.perf_counter() - link_started
        micro_batching = self._resolve_micro_batches(micro_batching, description, args, kwargs)
        log.info("lightning-split plan:\n%s", self.plan.describe())
        self.runtime = SplitRuntime(
            module,
            self.plan.graph_module,
            self.plan.spec,
            remote,
            {**description.to_wire(), "codec": self.options.codec},
            self.release_server_state,
            graph_args=self.plan.traced.graph_args,
            micro_batching=micro_batching,
        )
        self.runtime.open(self.optimizers)
        self.placements.append(self.plan.spec)
        log_hyperparams(self._attached_trainer, self.plan.summary())
        if self._federated is not None:
            self._federated.start(self.runtime, self._attached_trainer)

    def _resolve_micro_batches(
        self, config: MicroBatching, description: ModelDescription, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> MicroBatching:
        """``config`` with M chosen by the cost model for the placement when ``micro_batches="auto"``."""
        plan = self.plan
        assert plan is not None and self._remote is not None
        if self.micro_batches_requested == "auto" and config.micro_batches > 1:
            profile = plan.profile
            if profile is None:  # a user cut: price it as cut="auto" would
                link = self._replanner.probe.link(self._remote, plan.traced)
                profile = self._cost_source(description, args, kwargs)(plan.traced, link)
            chosen, predicted = choose_micro_batches(profile, plan.spec.server_nodes, config.micro_batches)
            plan.notes["predicted_pipelined_step_s"] = predicted
            config = dataclasses.replace(config, micro_batches=chosen)
        self.micro_batches = config.micro_batches
        plan.notes["micro_batches"] = config.micro_batches
        return config

    def _cost_source(
        self, description: ModelDescription, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> ProfileBuilder:
        """The profile builder ``costs`` asks for (:func:`~lightning_split.costs.sources.cost_source`)."""
        options = dict(self.costs_options)
        if self.costs == "measure" and self._timed_micro_batches > 1:
            options.setdefault("micro_batches", self._timed_micro_batches)  # what each micro-batch pays, timed
        return cost_source(
            self.costs,
            options,
            remote=self._remote,
            model=description.model,
            init_args=description.init_args,
            args=args,
            kwargs=kwargs,
            device=self.root_device,
            module=self.lightning_module,
            optimizers=self.optimizers,
        )

    def _replan(self) -> None:
        """Carry out a due re-plan: maybe a new placement and runtime, and its metrics logged."""
        plan, runtime = self.plan, self.runtime
        if plan is None or runtime is None or plan.profile is None:
            return
        outcome = self._replanner.replan(plan, runtime, self._remote)
        if outcome is None:
            return
        self.plan, self.runtime, record = outcome
        if record.moved:
            self.placements.append(self.plan.spec)
        log_metrics(self._attached_trainer, replan_metrics(record.link, record.new_predicted_s, self._replanner.moves))

    @property
    def _attached_trainer(self) -> Any:
        """The trainer the module is attached to (``None`` before fit or outside one)."""
        return getattr(self.lightning_module, "_trainer", None)

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
            self._traffic.after_step(self._attached_trainer, self.runtime)
            self._replanner.step_done()
            if self._federated is not None:
                self._federated.after_step()

    def _zero_grad(self, raw: torch.optim.Optimizer, original: Any, set_to_none: bool = True) -> None:
        original(raw, set_to_none=set_to_none)
        if self.runtime is not None:
            self.runtime.zero_grad(raw, set_to_none)

    def _clip_grad_by_norm(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        if self.runtime is None:
            torch.nn.utils.clip_grad_norm_(self.precision_plugin.main_params(optimizer), clip_val)
        else:
            self.runtime.clip_grad_norm(optimizer, float(clip_val))

    def _unscale_server_grads(self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor) -> bool:
        return self.runtime is not None and self.runtime.unscale_server_grads(optimizer, inv_scale)

    def _clip_grad_by_value(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        if self.runtime is None:
            torch.nn.utils.clip_grad_value_(self.precision_plugin.main_params(optimizer), clip_val)
        else:
            self.runtime.clip_grad_value(optimizer, float(clip_val))

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        for name in STRATEGY_NAMES:
            strategy_registry.register(name, cls, description="split learning over websockets", override=True)


def _as_link(link: str | Link | None) -> Link | None:
    return Link.parse(link) if isinstance(link, str) else link


def _class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


def _init_args(module: nn.Module) -> dict[str, Any]:
    hparams = getattr(module, "hparams", None)
    return dict(hparams) if hparams else {}


def _embedded_factory(module: nn.Module) -> Any:
    """The embedded server's model: a fresh instance from the init arguments, else the module as it is.

    Without init arguments (no ``save_hyperparameters()``, no ``init_args=``) a fresh instance
    would have the defaults, not what the module was built with; the embedded server shares
    this process, so it takes a copy of the module itself (without the trainer), made at the
    first call, before the device releases the server's weights.
    """
    import copy

    pristine: list[nn.Module] = []

    def factory(init_args: Any) -> nn.Module:
        if init_args:
            try:
                return type(module)(**dict(init_args))
            except TypeError:
                pass
        if not pristine:
            skip = [getattr(module, "_trainer", None), module.__dict__.get("forward")]
            copied = copy.deepcopy(module, {id(obj): None for obj in skip if obj is not None})
            copied.__dict__.pop("forward", None)
            copied._trainer = None
            pristine.append(copied)
        return copy.deepcopy(pristine[0])

    return factory


#: the names ``Trainer(strategy=...)`` accepts for this strategy: ``"split"`` and the class paths, as
#: LightningCLI passes ``--trainer.strategy=lightning_split.SplitStrategy`` on as a string (which
#: Lightning lower-cases before it looks the name up).
STRATEGY_NAMES = ("split", "lightning_split.splitstrategy", "lightning_split.runtime.strategy.splitstrategy")

SplitStrategy.register_strategies(StrategyRegistry)
