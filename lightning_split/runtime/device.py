"""The device's half of a split model, independent of Lightning.

:class:`SplitRuntime` replaces a module's ``forward``: it runs the device program, sends
the cut values to the server through one ``autograd.Function`` (forward uploads the cut,
backward uploads the output gradients and returns the cut's gradients) and rebuilds the
model's return value. It mirrors the module's optimizers on the server (step, zero_grad,
clipping by the global norm over both sides) and moves the suffix's state back and forth
for checkpoints. :meth:`SplitRuntime.moved_to` moves the boundary between two optimizer
steps (live re-planning). :class:`lightning_split.runtime.strategy.SplitStrategy` is a thin layer over it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn

from lightning_split.graph.programs import (
    SplitSpec,
    assemble_output,
    device_outputs,
    device_program,
    used_state,
)
from lightning_split.runtime.precision import autocast_dtype
from lightning_split.transport import messages
from lightning_split.transport.client import RemoteServer, Traffic
from lightning_split.transport.optimizers import describe_optimizer, is_mirrorable, wire_hyperparameters

log = logging.getLogger("lightning_split")


class SplitConfigError(ValueError):
    """The model or its training setup cannot be split as asked; the message says how to fix it."""


class _Call:
    """One remote forward: its id and what is needed to rebuild its outputs."""

    __slots__ = ("__weakref__", "id", "is_tensor", "outputs")

    def __init__(self, call_id: int) -> None:
        self.id = call_id
        self.is_tensor: list[bool] = []  # which server outputs are tensors (autograd outputs)
        self.outputs: list[Any] = []  # handed to the caller right after forward, then cleared


class _RemoteSuffix(torch.autograd.Function):
    """Autograd node for the server's part: cut tensors in, server outputs out."""

    @staticmethod
    def forward(ctx: Any, runtime: SplitRuntime, call: _Call, values: list[Any], *tensors: torch.Tensor) -> Any:
        ctx.set_materialize_grads(False)
        ctx.runtime, ctx.call = runtime, call
        ctx.tensor_slots = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
        outputs = runtime._remote_forward(call, values, grad=True)
        tensors_out = tuple(o for o in outputs if isinstance(o, torch.Tensor))
        frozen = [t for t in tensors_out if not (t.is_floating_point() or t.is_complex())]
        if frozen:
            ctx.mark_non_differentiable(*frozen)
        call.outputs = outputs
        call.is_tensor = [isinstance(o, torch.Tensor) for o in outputs]
        return tensors_out

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> Any:
        cut_grads = ctx.runtime._remote_backward(ctx.call, list(grads))
        tensor_grads = [cut_grads[slot] for slot in ctx.tensor_slots]
        return (None, None, None, *tensor_grads, None)


class SplitRuntime:
    """Runs ``module``'s forward split between this process and a server session.

    Args:
        module: the user's module (its parameters stay the device's parameters).
        graph_module: the module's fx trace (shares the module's submodules).
        spec: the placement.
        remote: the connection to the server.
        hello: the session fields describing the model (model name, init args,
            fingerprint, graph summary, leaf modules, concrete args).
        release_server_state: free the device's copies of the suffix's parameters and
            buffers while the server holds them (they come back for checkpoints and at
            :meth:`close`).
    """

    def __init__(
        self,
        module: nn.Module,
        graph_module: fx.GraphModule,
        spec: SplitSpec,
        remote: RemoteServer | None,
        hello: dict[str, Any],
        release_server_state: bool = True,
        graph_args: Callable[..., tuple[Any, ...]] | None = None,
    ) -> None:
        self.module = module
        self.graph_args = graph_args or (lambda *args, **kwargs: (*args, *kwargs.values()))
        self.graph_module = graph_module
        self.spec = spec
        self.remote = remote
        self.hello = hello
        self.release_server_state = release_server_state
        self.program = device_program(graph_module, spec)
        self.device_returned = device_outputs(graph_module, spec)
        self.server_state_keys = tuple(used_state(graph_module, spec.server_nodes)) if spec.server_nodes else ()
        self.tensors_by_key = dict(_named_tensors(module))
        self.key_of = {}
        for key, tensor in _named_tensors(module):
            self.key_of.setdefault(id(tensor), key)
        self.optimizers: list[torch.optim.Optimizer] = []
        self.rng_sync = False
        self._rng_returned: torch.Tensor | None = None  # the random state the server last handed back
        self.setup_traffic = Traffic()  # the connection's traffic when the session was open (weights, probes)
        self.opened = False
        self._ids = itertools.count()
        self._pending: set[int] = set()
        self._forgotten: collections.deque[int] = collections.deque()
        self._anchor = torch.zeros((), requires_grad=True)

    @property
    def stats(self) -> Traffic:
        """Cumulative traffic, wire time and server compute of this session."""
        return self.remote.traffic if self.remote is not None else Traffic()

    @property
    def is_split(self) -> bool:
        return bool(self.spec.server_nodes)

    # -- session ---------------------------------------------------------------------------

    def open(self, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        """Start the server session: send the suffix's state and optimizer descriptions."""
        self.optimizers = list(optimizers)
        if not self.is_split:
            return
        assert self.remote is not None
        state = {key: self.tensors_by_key[key].detach() for key in self.server_state_keys}
        hello = messages.Hello(
            **self.hello,
            spec=self.spec.to_json(),
            optimizers=[self._describe(opt) for opt in self.optimizers],
            state=state,
        )
        (reply,) = self.remote.call([hello])
        self.rng_sync = reply.rng_sync
        self.opened = True
        self._move_optimizer_state_to_server()
        if self.release_server_state:
            self.release()
        self.setup_traffic = self.remote.traffic.snapshot()

    def close(self, end_connection: bool = True) -> None:
        """Bring the suffix's state home and end the session (and the connection, unless told to keep it)."""
        if not self.is_split or self.remote is None:
            return
        if not self.opened:
            if end_connection:
                self.remote.close()
            return
        try:
            self.pull_state()
            self.pull_optimizer_state()
            self.remote.call([messages.Close()])
            self.opened = False
        finally:
            if end_connection:
                self.remote.close()

    def moved_to(self, spec: SplitSpec) -> SplitRuntime:
        """Move the boundary to ``spec``: a new runtime and server session, on the same connection.

        The suffix's parameters, buffers and per-parameter optimizer state come home (as at
        :meth:`close`); the new runtime's :meth:`open` sends the new suffix's state and the
        optimizer state of its parameters. Call it between optimizer steps, when the
        gradients are spent (the next thing done with them is ``zero_grad``): the gradients
        of parameters that move to the server are dropped, not sent.
        """
        self.close(end_connection=False)
        successor = SplitRuntime(
            self.module,
            self.graph_module,
            spec,
            self.remote,
            self.hello,
            self.release_server_state,
            graph_args=self.graph_args,
        )
        successor.drop_server_grads()
        successor.open(self.optimizers)
        return successor

    def drop_server_grads(self) -> None:
        """Forget the device's gradients of the server's parameters (the server keeps its own)."""
        for key in self.server_state_keys:
            tensor = self.tensors_by_key[key]
            if isinstance(tensor, nn.Parameter):
                tensor.grad = None

    def release(self) -> None:
        """Free the device's copies of the server's tensors (shapes are kept to check what comes back)."""
        with torch.no_grad():
            for key in self.server_state_keys:
                tensor = self.tensors_by_key[key]
                tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)

    def pull_state(self) -> None:
        """Copy the suffix's current parameters and buffers from the server into the module."""
        if not self.is_split:
            return
        assert self.remote is not None
        (reply,) = self.remote.call([messages.StateDict()])
        with torch.no_grad():
            for key in self.server_state_keys:
                tensor = self.tensors_by_key[key]
                tensor.data = reply.state[key].to(device=tensor.device, dtype=tensor.dtype)

    def pull_optimizer_state(self) -> None:
        """Install the server's per-parameter optimizer state into the device's optimizers."""
        assert self.remote is not None
        for index, optimizer in enumerate(self.optimizers):
            (reply,) = self.remote.call([messages.OptimizerState(optimizer=index)])
            server_state = reply.state
            for group in optimizer.param_groups:
                for param in group["params"]:
                    key = self.key_of.get(id(param))
                    if key in server_state:
                        optimizer.state[param] = {
                            name: value.to(param.device) if isinstance(value, torch.Tensor) and value.dim() else value
                            for name, value in server_state[key].items()
                        }

    def _describe(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if not is_mirrorable(optimizer):
            cls = type(optimizer)
            raise SplitConfigError(
                f"optimizer {cls.__module__}.{cls.__qualname__} is not a torch.optim optimizer; the server can only "
                "mirror torch.optim classes. Use one, or pin the parameters it trains to the device."
            )
        return describe_optimizer(optimizer, self.key_of)

    def _move_optimizer_state_to_server(self) -> None:
        """Optimizer state restored on the device (e.g. from a checkpoint) moves to the server."""
        assert self.remote is not None
        server_keys = set(self.server_state_keys)
        for index, optimizer in enumerate(self.optimizers):
            moving: dict[str, dict[str, Any]] = {}
            for group in optimizer.param_groups:
                for param in group["params"]:
                    key = self.key_of.get(id(param))
                    if key in server_keys and param in optimizer.state:
                        moving[key] = dict(optimizer.state.pop(param))
            if moving:
                self.remote.call([messages.LoadOptimizerState(optimizer=index, state=moving)])

    # -- forward / backward ----------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The module's new forward: device program, then the server, then the output rebuilt."""
        outputs = self.program(*self.graph_args(*args, **kwargs))
        n_cut = len(self.spec.cut)
        values: dict[str, Any] = dict(zip(self.device_returned, outputs[n_cut:]))
        if self.is_split:
            cut_values = list(outputs[:n_cut])
            if torch.is_grad_enabled():
                call = _Call(next(self._ids))
                tensors = [v for v in cut_values if isinstance(v, torch.Tensor)]
                results = _RemoteSuffix.apply(self, call, cut_values, *tensors, self._anchor)
                server_values = _merge(call.outputs, results)
                call.outputs = []  # the autograd graph must not hold its own outputs
                self._track(call)
            else:
                server_values = self._remote_forward(_Call(next(self._ids)), cut_values, grad=False)
            values.update(zip(self.spec.server_outputs, server_values))
        return assemble_output(self.graph_module, values)

    def _track(self, call: _Call) -> None:
        self._pending.add(call.id)
        weakref.finalize(call, self._forgotten.append, call.id)

    def _flush_forgotten(self) -> None:
        assert self.remote is not None
        ids = []
        while self._forgotten:
            call_id = self._forgotten.popleft()
            if call_id in self._pending:
                self._pending.discard(call_id)
                ids.append(call_id)
        if ids:
            self.remote.defer(messages.Release(ids=ids))

    def _remote_forward(self, call: _Call, values: list[Any], grad: bool) -> list[Any]:
        assert self.remote is not None
        self._flush_forgotten()
        rng = torch.get_rng_state() if self.rng_sync else None
        same = rng is not None and self._rng_returned is not None and torch.equal(rng, self._rng_returned)
        op = messages.Forward(
            id=call.id,
            values=[v.detach() if isinstance(v, torch.Tensor) else v for v in values],
            requires_grad=[isinstance(v, torch.Tensor) and v.requires_grad for v in values],
            training=self.module.training,
            grad=grad,
            rng=None if same else rng,  # unchanged since the server returned it: the server has it
            rng_same=same,
            autocast=autocast_dtype(_first_device(values)),
        )
        (result,) = self.remote.call([op])
        if result.rng is not None:
            torch.set_rng_state(result.rng)
            self._rng_returned = result.rng
        self._account(result)
        device = _first_device(values)
        return [o.to(device) if isinstance(o, torch.Tensor) else o for o in result.outputs]

    def _remote_backward(self, call: _Call, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        assert self.remote is not None
        self._pending.discard(call.id)
        grads_iter = iter(grads)
        full = [next(grads_iter) if is_tensor else None for is_tensor in call.is_tensor]
        (result,) = self.remote.call([messages.Backward(id=call.id, grads=full)])
        self._account(result)
        return list(result.grads)

    def _account(self, result: messages.ForwardReply | messages.BackwardReply) -> None:
        if self.remote is not None:
            self.remote.traffic.server_compute_s = float(result.compute_s)

    # -- optimizers ------------------------------------------------------------------------

    def index_of(self, optimizer: Any) -> int:
        raw = getattr(optimizer, "_optimizer", optimizer)
        for index, known in enumerate(self.optimizers):
            if known is raw:
                return index
        raise SplitConfigError("an optimizer the split runtime does not know was used; create optimizers before fit")

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Mirror an optimizer step on the server with the current hyperparameters."""
        if self.is_split and self.remote is not None:
            index = self.index_of(optimizer)
            self.remote.defer(
                messages.Step(optimizer=index, hparams=[wire_hyperparameters(g) for g in optimizer.param_groups])
            )

    def zero_grad(self, optimizer: torch.optim.Optimizer, set_to_none: bool = True) -> None:
        if self.is_split and self.remote is not None:
            self.remote.defer(messages.ZeroGrad(optimizer=self.index_of(optimizer), set_to_none=set_to_none))

    def clip_grad_norm(self, optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip by the global norm over the device's and the server's gradients of ``optimizer``.

        The per-tensor norms of both sides are stacked in the optimizer's parameter order
        and reduced exactly as ``torch.nn.utils.clip_grad_norm_`` does, then both sides
        scale by the same coefficient.
        """
        index = self.index_of(optimizer)
        raw = self.optimizers[index]
        server_norms: dict[str, torch.Tensor] = {}
        if self.is_split and self.remote is not None:
            (reply,) = self.remote.call([messages.GradNorms(optimizer=index, norm_type=norm_type)])
            server_norms = reply.norms
        norms, local = [], []
        for group in raw.param_groups:
            for param in group["params"]:
                key = self.key_of.get(id(param))
                if key in server_norms:
                    norms.append(server_norms[key].to(param.device))
                elif param.grad is not None:
                    norms.append(torch.linalg.vector_norm(param.grad, norm_type))
                    local.append(param.grad)
        if not norms:
            return torch.tensor(0.0)
        total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
        coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        if local:
            torch._foreach_mul_(local, coefficient.to(local[0].device))
        if server_norms:
            assert self.remote is not None
            self.remote.defer(messages.ScaleGrads(optimizer=index, coefficient=coefficient.detach().cpu()))
        return total

    def unscale_server_grads(self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor) -> bool:
        """Unscale the server's gradients of ``optimizer`` (a gradient scaler's ``unscale_``).

        Returns whether any of them is infinite or NaN, which the scaler must count as its own.
        """
        if not (self.is_split and self.remote is not None):
            return False
        index = self.index_of(optimizer)
        self.remote.defer(messages.ScaleGrads(optimizer=index, coefficient=inv_scale.detach().float().cpu()))
        (reply,) = self.remote.call([messages.GradNorms(optimizer=index, norm_type=float("inf"))])
        return not all(bool(torch.isfinite(norm)) for norm in reply.norms.values())

    def clip_grad_value(self, optimizer: torch.optim.Optimizer, clip_value: float) -> None:
        index = self.index_of(optimizer)
        params = [p for g in self.optimizers[index].param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_value_(params, clip_value)
        if self.is_split and self.remote is not None:
            self.remote.defer(messages.ClipGradValue(optimizer=index, value=float(clip_value)))

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()`` with the server's per-parameter state merged in."""
        index = self.index_of(optimizer)
        raw = self.optimizers[index]
        state_dict = raw.state_dict()
        if not self.is_split or self.remote is None:
            return state_dict
        (reply,) = self.remote.call([messages.OptimizerState(optimizer=index)])
        server_state = reply.state
        position = 0
        for group in raw.param_groups:
            for param in group["params"]:
                key = self.key_of.get(id(param))
                if key in server_state:
                    state_dict["state"][position] = dict(server_state[key])
                position += 1
        state_dict["state"] = dict(sorted(state_dict["state"].items()))
        return state_dict


def _merge(outputs: list[Any], tensors: Any) -> list[Any]:
    """Put the autograd-tracked tensors back among the server's non-tensor outputs."""
    if isinstance(tensors, torch.Tensor):
        tensors = (tensors,)
    tensor_iter = iter(tensors)
    return [next(tensor_iter) if isinstance(o, torch.Tensor) else o for o in outputs]


def _first_device(values: Iterable[Any]) -> torch.device:
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _named_tensors(module: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)
