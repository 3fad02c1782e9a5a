"""The server's own copy of the model: from a ``hello`` to a :class:`~lightning_split.serve.session.ServerSession`.

:class:`ModelHost` instantiates the model class it serves with the device's init arguments,
traces it on the device's shapes, checks that the graph is the device's (same fingerprint)
and builds the suffix. It also answers ``profile`` by timing its own copy. The device sends
data only: init arguments, a graph fingerprint, a placement, shapes; never code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from lightning_split.costs.measure import hardware_name, time_node_costs
from lightning_split.graph.capture import TracedModel, TraceError, trace_module
from lightning_split.graph.programs import SplitError, SplitSpec, graph_summary, make_spec, materialize_skeleton
from lightning_split.serve.limits import ModelLimits
from lightning_split.serve.session import ServerSession
from lightning_split.transport import messages
from lightning_split.transport.optimizers import OptimizerSpec, resolve_optimizer
from lightning_split.transport.protocol import SessionError

ModelFactory = Callable[[Mapping[str, Any]], nn.Module]


class ModelHost:
    """Builds sessions for one model class from the devices' ``hello`` ops.

    Args:
        factory: makes a fresh model from init arguments (JSON values).
        name: the ``pkg.module:Class`` this host serves; a device naming another class is refused.
        device: where suffixes run.
        init_args: if given, used instead of the init arguments devices send.
        limits: the largest model and example batch a device may make this host build
            (default: no bound; ``serve`` sets one).
    """

    def __init__(
        self,
        factory: ModelFactory,
        name: str,
        device: str | torch.device = "cpu",
        init_args: Mapping[str, Any] | None = None,
        limits: ModelLimits | None = None,
    ) -> None:
        self.factory = factory
        self.limits = limits or ModelLimits()
        self.name = name
        self.device = torch.device(device)
        self.init_args = dict(init_args) if init_args is not None else None

    @property
    def hardware(self) -> str:
        """What the suffixes run on (a CPU model or a GPU name), as cost caches key it."""
        return hardware_name(self.device)

    def open(self, hello: messages.Hello) -> ServerSession:
        """Check a ``hello`` against the server's own model and build the session."""
        with torch.random.fork_rng(devices=[]):  # building a session must not move anyone's random stream
            return self._open(hello)

    def profile(self, request: messages.Profile) -> messages.ProfileReply:
        """Measure forward+backward seconds of every node of the server's copy of the model.

        ``request`` describes the model as a ``hello`` does (without a placement). The
        timings are of this server's device, on zero tensors of the device's shapes. With
        ``optimizers`` (descriptions as in ``hello``), one step of each, rebuilt from
        ``torch.optim`` over copies of this server's parameters, is added to the parameter
        nodes; ``calibrate`` scales the nodes to whole forward+backward passes (see
        :func:`lightning_split.costs.measure.time_node_costs`). The reply's ``calibration``
        says by how much, ``optimizer_node_s`` what each node got of the optimizer steps; with
        ``micro_batches`` > 1, ``forward_s`` and ``fixed_s`` give each node's forward share and
        the part each of that many micro-batches pays whatever its size.
        """
        for description in request.optimizers:  # refuse a malformed or foreign optimizer before any timing
            resolve_optimizer(OptimizerSpec.from_json(description).class_name)
        with torch.random.fork_rng(devices=[]):
            traced, example = self._trace(request)
            started = time.perf_counter()
            timed = time_node_costs(
                traced,
                tuple(example["args"]),
                dict(example["kwargs"]),
                device=self.device,
                warmup=max(0, min(request.warmup, 20)),
                repeats=max(1, min(request.repeats, 50)),
                calibrate=request.calibrate,
                optimizers=request.optimizers,
                micro_batches=request.micro_batches,
            )
        return messages.ProfileReply(
            node_s=timed.node_s,
            calibration=timed.details(),
            optimizer_node_s=timed.optimizer_node_s,
            forward_s=timed.forward_s,
            fixed_s=timed.fixed_s,
            device=str(self.device),
            hardware=self.hardware,
            measure_s=time.perf_counter() - started,
        )

    def _trace(self, model: messages.Hello | messages.Profile) -> tuple[TracedModel, dict[str, Any]]:
        """Instantiate the model, trace it on the device's shapes, check it is the device's graph."""
        if model.model != self.name:
            raise SessionError(
                f"this server serves {self.name}, the device trains {model.model}: start the server with "
                f"--model {model.model}"
            )
        init_args = self.init_args if self.init_args is not None else model.init_args
        self.limits.check_example(model.example)
        self.limits.check_model(self.factory, init_args)
        try:
            instance = self.factory(init_args)
        except Exception as exc:
            raise SessionError(
                f"cannot instantiate {self.name}({_short(init_args)}): {type(exc).__name__}: {exc}"
            ) from exc
        try:
            example = materialize_skeleton(model.example)
            traced = trace_module(
                instance,
                tuple(example["args"]),
                dict(example["kwargs"]),
                model.leaf_modules,
                method=model.capture,  # the device's way, so both sides get the same graph
            )
        except (SplitError, TraceError, KeyError, TypeError, ValueError) as exc:
            raise SessionError(f"the server cannot trace its {self.name}: {exc}") from exc
        if traced.fingerprint() != model.fingerprint:
            raise SessionError(
                f"the server's {self.name} traces to a different graph than the device's: "
                f"{_first_difference(model.graph, graph_summary(traced.graph_module))}. "
                f"Are both sides running the same model version and init arguments? {self._init_hint(init_args)}"
            )
        return traced, example

    def _open(self, hello: messages.Hello) -> ServerSession:
        traced, _ = self._trace(hello)
        graph = traced.graph_module
        try:
            spec = SplitSpec.from_json(hello.spec)
            derived = make_spec(graph, spec.server_nodes)
        except SplitError as exc:
            raise SessionError(str(exc)) from exc
        if derived != spec:
            raise SessionError(f"placement disagrees with the server's graph: device {spec}, server {derived}")
        optimizers = [OptimizerSpec.from_json(o) for o in hello.optimizers]
        cut_meta = [traced.node(name).out_meta for name in spec.cut]
        return ServerSession(graph, spec, hello.state, optimizers, device=self.device, cut_meta=cut_meta)

    def _init_hint(self, init_args: Mapping[str, Any]) -> str:
        """How the server built its copy, and how a device passes the arguments its model was built with."""
        return (
            f"The server builds its copy as {self.name}(**init_args) with init_args={_short(dict(init_args))}: "
            "a module built with other arguments must record them (self.save_hyperparameters() in its "
            "__init__) or the device must pass them (SplitStrategy(init_args={...}))"
        )


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_difference(client: Any, server: list[list[str]]) -> str:
    if not isinstance(client, list):
        return "the device sent no graph summary"
    for index, (mine, theirs) in enumerate(zip(server, client)):
        if list(mine) != list(theirs):
            return f"node {index} is {theirs} on the device but {mine} on the server"
    if len(client) != len(server):
        return f"the device's graph has {len(client)} nodes, the server's {len(server)}"
    return "same nodes, different arguments"
