"""Typed messages: each op the device sends and each reply the server gives, one small class.

As h11's events and websockets' frames are, a message is a frozen dataclass of plain wire
values (see :mod:`lightning_split.transport.schema`). ``to_wire()`` gives what
:func:`lightning_split.transport.wire.encode` carries inside a request (an op: a dict whose
``"op"`` key names it) or a reply (the op's result); ``from_wire()`` rebuilds the message
from a decoded value. A message checks its fields when it is made, on whichever side, so the
device checks what it sends and what it gets back, the server what it receives; a broken rule
raises :class:`~lightning_split.transport.errors.ProtocolError` naming the field. Rules that
need a session (an optimizer index in range, cut values of the planned shapes) are the
session's.

A field with a default may be left out on the wire, and is left out while it holds the
default, so a peer that predates the field still understands the message. Nothing received
is executed, imported or unpickled: a field is data.

The ops, by wire name (the server's :class:`~lightning_split.serve.session.ServerSession`
runs the session ops; the websocket app the rest):

==========================  ========================================================
``hello``                   open a session: model, placement, suffix state, optimizers
``resume``                  continue a session on a new connection
``forward``, ``backward``   run the suffix, backpropagate through it
``release``                 forget forwards whose backward will never come
``zero_grad``, ``step``     mirror an optimizer
``grad_norms``,             clip gradients by the global norm over both sides,
``scale_grads``,            or by value
``clip_grad_value``
``state_dict``,             state transfers (checkpoints, moving the boundary)
``optimizer_state``,
``load_optimizer_state``
``profile``, ``ping``       measure the server's node costs; probe the link
``close``                   end the session
``fed_join``, ``fed_wait``  many devices, one model (see
``fed_submit``              :mod:`lightning_split.transport.federation`)
==========================  ========================================================
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from lightning_split.transport.codecs import CODECS
from lightning_split.transport.errors import ProtocolError
from lightning_split.transport.federation import FedJoin, FedJoinReply, FedSubmit, FedWait, FedWaitReply
from lightning_split.transport.schema import MappingReply, Message, Op, Reply, clip, kind

__all__ = [
    "AUTOCAST_DTYPES",
    "OPS",
    "SESSION_ID",
    "Backward",
    "BackwardReply",
    "ClipGradValue",
    "Close",
    "FedJoin",
    "FedJoinReply",
    "FedSubmit",
    "FedWait",
    "FedWaitReply",
    "Forward",
    "ForwardReply",
    "GradNorms",
    "GradNormsReply",
    "Hello",
    "HelloReply",
    "LoadOptimizerState",
    "MappingReply",
    "Message",
    "Op",
    "OptimizerState",
    "OptimizerStateReply",
    "Ping",
    "PingReply",
    "Profile",
    "ProfileReply",
    "Release",
    "Reply",
    "Resume",
    "ResumeReply",
    "ScaleGrads",
    "StateDict",
    "StateDictReply",
    "Step",
    "ZeroGrad",
    "op_from_wire",
]

#: a session id: what ``hello`` answers and ``resume`` names (it also names the session's state file).
SESSION_ID = re.compile(r"^[0-9a-f]{32}$")

#: the autocast dtypes a forward may ask the server to run its part under (mixed precision).
AUTOCAST_DTYPES = ("bfloat16", "float16")
#: the most micro-batches a ``profile`` op may ask the server to time for (the strategy uses at most 16)
MAX_PROFILE_MICRO_BATCHES = 64


# -- replies --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class HelloReply(Reply):
    """The session opened: where it runs, whether random streams can be synchronised, its id."""

    label: ClassVar[str] = "reply to hello"
    device: str
    rng_sync: bool
    session: str
    persistent: bool  # the server persists the session (the device keeps its requests until durable)

    def _check(self) -> None:
        if not SESSION_ID.match(self.session):
            raise self._fail("session", f"must be 32 lowercase hex digits, got {clip(self.session)}")


@dataclass(frozen=True, kw_only=True, eq=False)
class ResumeReply(Reply):
    """Where the resumed session's sequence stands (see :class:`~lightning_split.transport.protocol.Sequencer`)."""

    label: ClassVar[str] = "reply to resume"
    session: str
    last_seq: int | None
    have_reply: bool
    durable: int | None

    def _check(self) -> None:
        if self.durable is not None and (self.last_seq is None or self.durable > self.last_seq):
            raise self._fail("durable", f"must be at most last_seq ({self.last_seq}), got {self.durable}")


@dataclass(frozen=True, kw_only=True, eq=False)
class ForwardReply(Reply):
    """The server outputs (detached, on CPU), the CPU random state after them, the server's compute time."""

    label: ClassVar[str] = "reply to forward"
    outputs: list[Any]
    rng: Tensor | None
    compute_s: float


@dataclass(frozen=True, kw_only=True, eq=False)
class BackwardReply(Reply):
    """The gradients of the cut values (``None`` where a value has none), the server's compute time."""

    label: ClassVar[str] = "reply to backward"
    grads: list[Tensor | None]
    compute_s: float


@dataclass(frozen=True, kw_only=True, eq=False)
class GradNormsReply(MappingReply):
    """The norm of each server gradient of the optimizer, by state key."""

    label: ClassVar[str] = "reply to grad_norms"
    norms: dict[str, Tensor]


@dataclass(frozen=True, kw_only=True, eq=False)
class StateDictReply(MappingReply):
    """The suffix's parameters and buffers, by state key."""

    label: ClassVar[str] = "reply to state_dict"
    state: dict[str, Tensor]


@dataclass(frozen=True, kw_only=True, eq=False)
class OptimizerStateReply(MappingReply):
    """The per-parameter state of one mirrored optimizer, by state key."""

    label: ClassVar[str] = "reply to optimizer_state"
    state: dict[str, dict[str, Any]]


@dataclass(frozen=True, kw_only=True, eq=False)
class ProfileReply(Reply):
    """The server's measured seconds per node, how they were calibrated, and on what."""

    label: ClassVar[str] = "reply to profile"
    node_s: dict[str, float]
    calibration: dict[str, Any] = field(default_factory=dict)
    optimizer_node_s: dict[str, float] = field(default_factory=dict)
    forward_s: dict[str, float] = field(default_factory=dict)  # forward shares (asked with micro_batches > 1)
    fixed_s: dict[str, float] = field(default_factory=dict)  # what each micro-batch pays whatever its size
    device: str
    hardware: str
    measure_s: float


@dataclass(frozen=True, kw_only=True, eq=False)
class PingReply(Reply):
    """``reply_bytes`` zero bytes, and what the server runs on."""

    label: ClassVar[str] = "reply to ping"
    payload: Tensor
    hardware: str = ""
    torch: str = ""  # the server's torch version (part of cost-cache keys)


# -- ops ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class _ModelFields:
    """What lets the server rebuild and check the device's model: class, init arguments, graph, shapes."""

    model: str  # "pkg.module:Class"
    init_args: dict[str, Any]
    fingerprint: str
    example: dict[str, Any]  # the skeleton of a batch (shapes and dtypes, never data)
    leaf_modules: list[str] = field(default_factory=list)
    graph: list[Any] | None = None  # the graph summary, to say where the server's graph differs
    capture: str = "fx"  # how the device captured its graph ("fx" or "export"): the server does the same


@dataclass(frozen=True, kw_only=True, eq=False)
class Hello(_ModelFields, Op):
    """Open a session: the model, the placement, the suffix's state and the optimizers to mirror."""

    name: ClassVar[str] = "hello"
    reply: ClassVar[type[Reply]] = HelloReply
    spec: dict[str, Any]
    optimizers: list[dict[str, Any]]
    state: dict[str, Tensor]
    codec: str = "none"  # how the tensors that cross the cut are written (transport/codecs.py)

    def _check(self) -> None:
        if self.codec not in CODECS:
            raise self._fail("codec", f"names unknown codec {clip(self.codec)}; known codecs: {', '.join(CODECS)}")


@dataclass(frozen=True, kw_only=True, eq=False)
class Resume(Op):
    """Continue session ``session`` on this connection (after a dropped connection or a restart)."""

    name: ClassVar[str] = "resume"
    reply: ClassVar[type[Reply]] = ResumeReply
    unordered: ClassVar[bool] = True
    session: str

    def _check(self) -> None:
        if not SESSION_ID.match(self.session):
            raise self._fail("session", f"must be 32 lowercase hex digits, got {clip(self.session)}")


@dataclass(frozen=True, kw_only=True, eq=False)
class Forward(Op):
    """Run the suffix on the cut values of forward ``id``; keep its graph for ``backward`` when ``grad``."""

    name: ClassVar[str] = "forward"
    reply: ClassVar[type[Reply]] = ForwardReply
    id: int
    values: list[Any]
    requires_grad: list[bool]
    training: bool
    grad: bool
    rng: Tensor | None  # the device's CPU random state, when the two sides share random streams
    rng_same: bool = False  # the state is the one the server's last forward returned: not sent again
    autocast: str | None = None  # the autocast dtype the device's forward ran under (mixed precision)

    def _check(self) -> None:
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            choices = ", ".join(AUTOCAST_DTYPES)
            raise self._fail("autocast", f"must be one of {choices} or null, got {clip(self.autocast)}")


@dataclass(frozen=True, kw_only=True, eq=False)
class Backward(Op):
    """Backpropagate the gradients of forward ``id``'s outputs (``None`` for outputs without one)."""

    name: ClassVar[str] = "backward"
    reply: ClassVar[type[Reply]] = BackwardReply
    id: int
    grads: list[Tensor | None]


@dataclass(frozen=True, kw_only=True, eq=False)
class Release(Op):
    """Forget the forwards ``ids``: their outputs were dropped, so their backward never comes."""

    name: ClassVar[str] = "release"
    deferrable: ClassVar[bool] = True
    ids: list[int]


@dataclass(frozen=True, kw_only=True, eq=False)
class ZeroGrad(Op):
    """``zero_grad`` of the mirror of optimizer ``optimizer``."""

    name: ClassVar[str] = "zero_grad"
    deferrable: ClassVar[bool] = True
    optimizer: int
    set_to_none: bool


@dataclass(frozen=True, kw_only=True, eq=False)
class GradNorms(Op):
    """The norm of each server gradient of optimizer ``optimizer`` (for clipping by the global norm)."""

    name: ClassVar[str] = "grad_norms"
    reply: ClassVar[type[Reply]] = GradNormsReply
    optimizer: int
    norm_type: float


@dataclass(frozen=True, kw_only=True, eq=False)
class ScaleGrads(Op):
    """Multiply the server gradients of optimizer ``optimizer`` by ``coefficient`` (a 0-d tensor)."""

    name: ClassVar[str] = "scale_grads"
    deferrable: ClassVar[bool] = True
    optimizer: int
    coefficient: Tensor


@dataclass(frozen=True, kw_only=True, eq=False)
class ClipGradValue(Op):
    """Clip the server gradients of optimizer ``optimizer`` to ``[-value, value]``."""

    name: ClassVar[str] = "clip_grad_value"
    deferrable: ClassVar[bool] = True
    optimizer: int
    value: float


@dataclass(frozen=True, kw_only=True, eq=False)
class Step(Op):
    """One step of the mirror of optimizer ``optimizer``, with each param group's current hyperparameters."""

    name: ClassVar[str] = "step"
    deferrable: ClassVar[bool] = True
    optimizer: int
    hparams: list[dict[str, Any]]


@dataclass(frozen=True, kw_only=True, eq=False)
class StateDict(Op):
    """Send the suffix's parameters and buffers."""

    name: ClassVar[str] = "state_dict"
    reply: ClassVar[type[Reply]] = StateDictReply


@dataclass(frozen=True, kw_only=True, eq=False)
class OptimizerState(Op):
    """Send the per-parameter state of the mirror of optimizer ``optimizer``."""

    name: ClassVar[str] = "optimizer_state"
    reply: ClassVar[type[Reply]] = OptimizerStateReply
    optimizer: int


@dataclass(frozen=True, kw_only=True, eq=False)
class LoadOptimizerState(Op):
    """Install per-parameter state (by state key) in the mirror of optimizer ``optimizer``."""

    name: ClassVar[str] = "load_optimizer_state"
    optimizer: int
    state: dict[str, dict[str, Any]]


@dataclass(frozen=True, kw_only=True, eq=False)
class Profile(_ModelFields, Op):
    """Time every node of the server's own copy of the model (and, with ``optimizers``, their steps)."""

    name: ClassVar[str] = "profile"
    reply: ClassVar[type[Reply]] = ProfileReply
    unordered: ClassVar[bool] = True
    warmup: int
    repeats: int
    optimizers: list[dict[str, Any]] = field(default_factory=list)
    calibrate: bool = True
    micro_batches: int = 1  # > 1: also the forward shares and the per-micro-batch fixed parts, for this M

    def _check(self) -> None:
        if not 1 <= self.micro_batches <= MAX_PROFILE_MICRO_BATCHES:
            raise self._fail("micro_batches", f"must be 1 to {MAX_PROFILE_MICRO_BATCHES}, got {self.micro_batches}")


@dataclass(frozen=True, kw_only=True, eq=False)
class Ping(Op):
    """Carry ``payload`` up and ``reply_bytes`` down (link probing); the reply says what the server runs on."""

    name: ClassVar[str] = "ping"
    reply: ClassVar[type[Reply]] = PingReply
    unordered: ClassVar[bool] = True
    payload: Tensor | None
    reply_bytes: int


@dataclass(frozen=True, kw_only=True, eq=False)
class Close(Op):
    """End the session (its state file too)."""

    name: ClassVar[str] = "close"


#: every op by its wire name.
OPS: Mapping[str, type[Op]] = types.MappingProxyType(
    {
        cls.name: cls
        for cls in (
            Hello,
            Resume,
            Forward,
            Backward,
            Release,
            ZeroGrad,
            GradNorms,
            ScaleGrads,
            ClipGradValue,
            Step,
            StateDict,
            OptimizerState,
            LoadOptimizerState,
            Profile,
            Ping,
            Close,
            FedJoin,  # the federation ops: lightning_split.transport.federation
            FedWait,
            FedSubmit,
        )
    }
)


def op_from_wire(value: Any, where: str | None = None) -> Op:
    """The op a decoded dict stands for, checked; its ``"op"`` key says which."""
    name = value.get("op") if isinstance(value, dict) else None
    cls = OPS.get(name) if isinstance(name, str) else None
    if cls is not None:
        return cls.from_wire(value, where)
    if not isinstance(value, dict):
        raise ProtocolError(f"expected an object, got {kind(value)}", where=where)
    raise ProtocolError(f"unknown op {clip(name)}; known ops: {', '.join(sorted(OPS))}", "op", where)
