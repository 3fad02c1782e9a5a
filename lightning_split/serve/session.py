"""The server's half of one training session: the suffix program, its state, its optimizers.

A :class:`ServerSession` runs what the device asks for, in order: forward passes (kept for
their backward), backward passes, gradient clipping and optimizer steps that mirror the
device's optimizers, and state transfers for checkpoints. :meth:`ServerSession.handle`
runs one session op (a typed message of :mod:`lightning_split.transport.messages`) through
a table and returns its reply. It knows nothing of sockets or framing (see
:mod:`lightning_split.serve.app` for the transport) so it can be driven and tested directly.

The server builds the suffix from *its own* instance of the model class: the device sends
the init arguments (JSON), the graph fingerprint and the node placement, never code.
Optimizers are rebuilt from ``torch.optim`` by class name only.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from lightning_split.graph.metadata import TensorMeta, ValueMeta, decode
from lightning_split.graph.programs import SplitError, SplitSpec, server_program, used_state
from lightning_split.transport import messages
from lightning_split.transport.optimizers import OptimizerSpec, hyperparameter_from_wire, resolve_optimizer
from lightning_split.transport.protocol import SessionError

OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass
class _Mirror:
    optimizer: torch.optim.Optimizer | None
    keys: list[list[str]]  # per group: keys of the server's params in that group, in group order
    all_keys: list[str] = field(default_factory=list)


class ServerSession:
    """Runs the suffix of one device's model.

    Args:
        graph_module: the server's own trace of the model (same fingerprint as the device's).
        spec: the placement agreed with the device.
        state: the suffix's parameters and buffers by state key, as sent by the device.
        optimizers: the device's optimizers to mirror.
        device: where the suffix runs (``"cpu"`` or ``"cuda"``).
        max_pending: forward passes kept for backward at most; older ones are dropped.
        cut_meta: the server's own trace of each cut value (``("tensor", shape, dtype)`` leaves);
            forward values are checked against it before anything runs: same kind, dtype, rank
            and sizes except the batch dimension, which may be at most ``max_batch``.
        max_batch: largest batch dimension accepted in a forward.
    """

    def __init__(
        self,
        graph_module: fx.GraphModule,
        spec: SplitSpec,
        state: Mapping[str, torch.Tensor],
        optimizers: Sequence[OptimizerSpec] = (),
        device: str | torch.device = "cpu",
        max_pending: int = 16,
        cut_meta: Sequence[Any] | None = None,
        max_batch: int = 65536,
    ) -> None:
        self.device = torch.device(device)
        self.spec = spec
        self.cut_meta = [decode(meta) for meta in cut_meta] if cut_meta is not None else None
        self.max_batch = max_batch
        try:
            program = server_program(graph_module, spec)
        except (SplitError, KeyError, AttributeError) as exc:
            raise SessionError(f"cannot build the server program: {exc}") from exc
        self.state_refs = used_state(program, spec.server_nodes)
        missing = sorted(set(self.state_refs) - set(state))
        unexpected = sorted(set(state) - set(self.state_refs))
        if missing or unexpected:
            raise SessionError(
                f"suffix state does not match the placement: missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        with torch.no_grad():
            for key, tensor in self.state_refs.items():
                incoming = state[key]
                if incoming.shape != tensor.shape or incoming.dtype != tensor.dtype:
                    raise SessionError(
                        f"state {key!r}: client sent {incoming.dtype} {tuple(incoming.shape)}, the server's model "
                        f"has {tensor.dtype} {tuple(tensor.shape)} (different model configuration?)"
                    )
                tensor.copy_(incoming)
        self.program = program.to(self.device)
        self.state_refs = used_state(self.program, spec.server_nodes)
        self.params = {k: v for k, v in self.state_refs.items() if isinstance(v, nn.Parameter)}
        self.mirrors = [self._mirror(spec) for spec in optimizers]
        self.pending: OrderedDict[int, tuple[list[Any], tuple[Any, ...]]] = OrderedDict()
        self.max_pending = max_pending
        self.compute_s = 0.0
        self.last_rng: torch.Tensor | None = None  # the CPU random state the last synced forward ended in

    def _mirror(self, spec: OptimizerSpec) -> _Mirror:
        resolve_optimizer(spec.class_name)  # refuse a class that is not torch.optim even with no server params
        keys = [[key for key in group["params"] if key in self.params] for group in spec.groups]
        all_keys = [key for group in keys for key in group]
        if not all_keys:
            return _Mirror(None, keys, all_keys)
        optimizer = spec.build([[self.params[key] for key in group_keys] for group_keys in keys], "on the server")
        return _Mirror(optimizer, keys, all_keys)

    def _optimizer(self, index: int) -> _Mirror:
        if not 0 <= index < len(self.mirrors):
            raise SessionError(f"optimizer index {index} out of range (the session has {len(self.mirrors)})")
        return self.mirrors[index]

    def handle(self, op: messages.Op) -> messages.Reply | None:
        """Run one op that concerns only this session (one of :data:`SESSION_OPS`); return its reply."""
        run = _HANDLERS.get(type(op))
        if run is None:
            raise SessionError(f"op {op.name!r} is not an op of the session")
        return run(self, op)

    # -- compute ---------------------------------------------------------------------------

    def forward(
        self,
        step_id: int,
        values: Sequence[Any],
        requires_grad: Sequence[bool],
        training: bool,
        grad: bool,
        rng_state: torch.Tensor | None = None,
        rng_same: bool = False,
        autocast: str | None = None,
    ) -> tuple[list[Any], torch.Tensor | None]:
        """Run the suffix on the cut values; keep the graph for :meth:`backward` when ``grad``.

        Returns the server outputs (detached, on CPU) and, when ``rng_state`` was given, the
        CPU generator state after the suffix ran (so the device's random stream continues
        exactly as in local training). ``rng_same`` stands for the state the previous such
        forward returned (the device drew no random numbers since; 5 KB not sent again).
        ``autocast`` is the dtype the device's forward ran under (``precision="bf16-mixed"``):
        the suffix runs under the same autocast on this side's device, as it would unsplit.
        """
        rng_state = self._random_state(rng_state, rng_same)
        if len(values) != len(self.spec.cut):
            raise SessionError(f"forward sent {len(values)} cut values, the plan has {len(self.spec.cut)}")
        if len(requires_grad) != len(values):
            raise SessionError(f"forward sent {len(requires_grad)} requires_grad flags for {len(values)} values")
        if self.cut_meta is not None:
            for name, value, meta in zip(self.spec.cut, values, self.cut_meta):
                _check_value(value, meta, f"cut value {name!r}", self.max_batch, autocast)
        started = time.perf_counter()
        inputs: list[Any] = []  # the leaves whose .grad backward returns
        program_inputs: list[Any] = []
        for value, needs_grad in zip(values, requires_grad):
            fed = value
            if isinstance(value, torch.Tensor):
                value = fed = value.to(self.device)
                if grad and needs_grad and value.is_floating_point():
                    value.requires_grad_(True)
                    fed = value.clone()  # an in-place op after the cut (ReLU(inplace=True)) must not hit the leaf
            inputs.append(value)
            program_inputs.append(fed)
        self.program.train(training)
        saved_rng = torch.get_rng_state() if rng_state is not None else None
        try:
            if rng_state is not None:
                torch.set_rng_state(rng_state)
            with torch.set_grad_enabled(grad), _autocast(self.device, autocast):
                outputs = self.program(*program_inputs)
            rng_after = torch.get_rng_state() if rng_state is not None else None
            if rng_after is not None:
                self.last_rng = rng_after
        finally:
            if saved_rng is not None:
                torch.set_rng_state(saved_rng)
        if grad:
            self.pending[step_id] = (inputs, outputs)
            while len(self.pending) > self.max_pending:
                self.pending.popitem(last=False)
        self.compute_s += time.perf_counter() - started
        state = {t.untyped_storage().data_ptr() for t in self.state_refs.values() if t.device.type == "cpu"}
        return [_to_cpu(output, _is_state(output, state)) for output in outputs], rng_after

    def _random_state(self, rng_state: torch.Tensor | None, rng_same: bool) -> torch.Tensor | None:
        if not rng_same:
            return rng_state
        if rng_state is not None or self.last_rng is None:
            raise SessionError(
                "forward says its random state is the last one returned, but "
                + ("sent one too" if rng_state is not None else "no forward has returned one in this session")
            )
        return self.last_rng

    def backward(self, step_id: int, grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Backpropagate the output gradients; accumulate parameter grads; return the cut's grads."""
        try:
            inputs, outputs = self.pending.pop(step_id)
        except KeyError:
            raise SessionError(
                f"backward for step {step_id}, which has no pending forward (already backpropagated or released)"
            ) from None
        if len(grads) != len(outputs):
            raise SessionError(f"backward sent {len(grads)} gradients for {len(outputs)} outputs")
        started = time.perf_counter()
        tensors, grad_tensors = [], []
        for output, grad in zip(outputs, grads):
            if grad is None or not isinstance(output, torch.Tensor) or not output.requires_grad:
                continue
            if not (grad.is_floating_point() or grad.is_complex()):  # a tensor or None: the Backward op says so
                raise SessionError(f"gradients must be floating-point tensors, got {_kind(grad)}")
            if grad.shape != output.shape:
                raise SessionError(
                    f"gradient of shape {tuple(grad.shape)} for an output of shape {tuple(output.shape)}"
                )
            tensors.append(output)
            grad_tensors.append(grad.to(device=self.device, dtype=output.dtype))
        if tensors:
            torch.autograd.backward(tensors, grad_tensors)
        result = [
            _to_cpu(value.grad) if isinstance(value, torch.Tensor) and value.requires_grad else None for value in inputs
        ]
        self.compute_s += time.perf_counter() - started
        return result

    def release(self, step_ids: Sequence[int]) -> None:
        """Drop forward passes whose backward will never come (their outputs were discarded)."""
        for step_id in step_ids:
            self.pending.pop(step_id, None)

    # -- optimizers ------------------------------------------------------------------------

    def _grads(self, index: int) -> list[tuple[str, torch.Tensor | None]]:
        return [(key, self.params[key].grad) for key in self._optimizer(index).all_keys]

    def zero_grad(self, index: int, set_to_none: bool = True) -> None:
        mirror = self._optimizer(index)
        if mirror.optimizer is not None:
            mirror.optimizer.zero_grad(set_to_none=set_to_none)

    def grad_norms(self, index: int, norm_type: float) -> dict[str, torch.Tensor]:
        """Per-parameter gradient norms (for clipping by the global norm over both sides)."""
        return {
            key: _to_cpu(torch.linalg.vector_norm(grad, norm_type))
            for key, grad in self._grads(index)
            if grad is not None
        }

    def scale_grads(self, index: int, coefficient: torch.Tensor) -> None:
        grads = [grad for _, grad in self._grads(index) if grad is not None]
        if grads:
            torch._foreach_mul_(grads, coefficient.to(grads[0].device))

    def clip_grad_value(self, index: int, clip_value: float) -> None:
        params = [self.params[key] for key in self._optimizer(index).all_keys]
        torch.nn.utils.clip_grad_value_(params, clip_value)

    def step(self, index: int, hparams: Sequence[Mapping[str, Any]]) -> None:
        """One optimizer step with the device's current hyperparameters (so LR schedules apply)."""
        mirror = self._optimizer(index)
        if mirror.optimizer is None:
            return
        if len(hparams) != len(mirror.optimizer.param_groups):
            raise SessionError(
                f"step sent {len(hparams)} param groups, optimizer {index} has {len(mirror.optimizer.param_groups)}"
            )
        for group, values in zip(mirror.optimizer.param_groups, hparams):
            for name, value in values.items():
                if name != "params":
                    group[name] = hyperparameter_from_wire(value)
        mirror.optimizer.step()

    # -- state -----------------------------------------------------------------------------

    def state_dict(self, copy: bool = False) -> dict[str, torch.Tensor]:
        """The suffix's parameters and buffers by the original module's state keys.

        With ``copy`` the tensors are copies even on the CPU (a reply must not point into live
        state: see :class:`~lightning_split.transport.protocol.Sequencer`); without, CPU
        tensors are the live ones, detached (for a snapshot that is encoded at once).
        """
        return {key: _to_cpu(tensor.detach(), copy) for key, tensor in self.state_refs.items()}

    def optimizer_state(self, index: int, copy: bool = False) -> dict[str, dict[str, Any]]:
        """Per-parameter optimizer state (momentum buffers, Adam moments, step) by state key.

        ``copy`` as in :meth:`state_dict`.
        """
        mirror = self._optimizer(index)
        if mirror.optimizer is None:
            return {}
        result = {}
        for key in mirror.all_keys:
            state = mirror.optimizer.state.get(self.params[key])
            if state:
                result[key] = {name: _to_cpu(value, copy) for name, value in state.items()}
        return result

    def load_optimizer_state(self, index: int, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Install per-parameter optimizer state (e.g. when resuming from a checkpoint)."""
        mirror = self._optimizer(index)
        if mirror.optimizer is None:
            return
        for key, state in states.items():
            if key not in self.params or key not in mirror.all_keys:
                raise SessionError(f"optimizer state for {key!r}, which is not a server parameter of optimizer {index}")
            param = self.params[key]
            mirror.optimizer.state[param] = {
                name: (value.to(param.device) if isinstance(value, torch.Tensor) and value.dim() > 0 else value)
                for name, value in state.items()
            }

    # -- persistence ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything a restarted server needs to continue: state, gradients, optimizer state."""
        return {
            "state": self.state_dict(),
            "grads": {key: _to_cpu(p.grad) for key, p in self.params.items() if p.grad is not None},
            "optimizers": [self.optimizer_state(i) for i in range(len(self.mirrors))],
            "rng": self.last_rng,
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Install a :meth:`snapshot` (taken from a session of the same model and placement)."""
        try:
            state, grads, optimizers = snapshot["state"], snapshot["grads"], snapshot["optimizers"]
            with torch.no_grad():
                for key, tensor in self.state_refs.items():
                    tensor.copy_(state[key])
                for key, param in self.params.items():
                    param.grad = grads[key].to(param.device).clone() if key in grads else None
            for index, states in enumerate(optimizers):
                self.load_optimizer_state(index, states)
            self.last_rng = snapshot.get("rng")
        except (KeyError, TypeError, RuntimeError) as exc:
            raise SessionError(f"the saved session does not fit this model: {exc!r}") from exc


def _forward(session: ServerSession, op: messages.Forward) -> messages.ForwardReply:
    outputs, rng = session.forward(
        op.id, op.values, op.requires_grad, op.training, op.grad, op.rng, op.rng_same, op.autocast
    )
    return messages.ForwardReply(outputs=outputs, rng=rng, compute_s=session.compute_s)


def _backward(session: ServerSession, op: messages.Backward) -> messages.BackwardReply:
    grads = session.backward(op.id, op.grads)
    return messages.BackwardReply(grads=grads, compute_s=session.compute_s)


#: each session op's handler: the op's fields in, its reply out.
_HANDLERS: dict[type[messages.Op], Callable[[ServerSession, Any], messages.Reply | None]] = {
    messages.Forward: _forward,
    messages.Backward: _backward,
    messages.Release: lambda session, op: session.release(op.ids),
    messages.ZeroGrad: lambda session, op: session.zero_grad(op.optimizer, op.set_to_none),
    messages.GradNorms: lambda session, op: messages.GradNormsReply(
        norms=session.grad_norms(op.optimizer, float(op.norm_type))
    ),
    messages.ScaleGrads: lambda session, op: session.scale_grads(op.optimizer, op.coefficient),
    messages.ClipGradValue: lambda session, op: session.clip_grad_value(op.optimizer, float(op.value)),
    messages.Step: lambda session, op: session.step(op.optimizer, op.hparams),
    messages.StateDict: lambda session, op: messages.StateDictReply(state=session.state_dict(copy=True)),
    messages.OptimizerState: lambda session, op: messages.OptimizerStateReply(
        state=session.optimizer_state(op.optimizer, copy=True)
    ),
    messages.LoadOptimizerState: lambda session, op: session.load_optimizer_state(op.optimizer, op.state),
}

#: the ops :meth:`ServerSession.handle` runs (the others concern connections, the host or the store).
SESSION_OPS = frozenset(_HANDLERS)


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _autocast(device: torch.device, dtype: str | None) -> contextlib.AbstractContextManager:
    """The device's autocast region on this side, or nothing when the device ran without one."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def _check_value(value: Any, meta: Any, what: str, max_batch: int, autocast: str | None = None) -> None:
    """Check a received value against the traced structure (decoded metadata) before it is used.

    Under autocast a floating-point value may also come in the autocast dtype (the prefix's
    last op ran in it).
    """
    if isinstance(meta, TensorMeta):
        shape, dtype = meta.shape, meta.dtype
        if not isinstance(value, torch.Tensor):
            raise SessionError(f"{what}: expected a tensor, got {_kind(value)}")
        allowed = {dtype}
        if autocast is not None and dtype.startswith(("torch.float", "torch.bfloat")):
            allowed.add(f"torch.{autocast}")
        if str(value.dtype) not in allowed or value.dim() != len(shape):
            raise SessionError(f"{what}: expected {dtype} of rank {len(shape)}, got {_kind(value)}")
        if tuple(value.shape[1:]) != tuple(shape[1:]) or (shape and not 0 < value.shape[0] <= max_batch):
            raise SessionError(
                f"{what}: expected shape (batch, {', '.join(map(str, shape[1:]))}) with batch <= {max_batch}, "
                f"got {tuple(value.shape)}"
            )
    elif isinstance(meta, tuple | list):
        if not isinstance(value, tuple | list) or len(value) != len(meta):
            raise SessionError(f"{what}: expected a sequence of {len(meta)} values, got {_kind(value)}")
        for index, (item, item_meta) in enumerate(zip(value, meta)):
            _check_value(item, item_meta, f"{what}[{index}]", max_batch, autocast)
    elif isinstance(value, torch.Tensor) and isinstance(meta, ValueMeta):
        raise SessionError(f"{what}: expected a {meta.type_name}, got {_kind(value)}")


def _to_cpu(value: Any, copy: bool = False) -> Any:
    """``value`` detached on the CPU; a copy when it was elsewhere, or when ``copy``."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            return value.detach().cpu()
        return value.detach().clone() if copy else value.detach()
    return value


def _is_state(value: Any, storages: set[int]) -> bool:
    """Whether ``value`` is a CPU tensor in the memory of a parameter or buffer (``storages``: their addresses)."""
    return (
        isinstance(value, torch.Tensor)
        and value.device.type == "cpu"
        and value.untyped_storage().nbytes() > 0
        and value.untyped_storage().data_ptr() in storages
    )
