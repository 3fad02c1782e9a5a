"""The lightning-split protocol, sans I/O: requests, replies and their rules.

A *request* is one websocket binary message from the device: a sequence number and a list
of *ops* the server runs in order (``zero_grad``, ``forward``, ``step``, ...). Ops that need
no answer (``zero_grad``, ``step``, ``release``) are deferred by the client and ride along
with the next op that does, so a training step costs two round trips (forward, backward),
as the cost model assumes. A *reply* carries the results of every op, or an error.

Every request has a sequence number one higher than the last; a request with the number
of the last one is a retry (after a dropped connection) and gets the same reply again,
never a second application. The sequence belongs to the *session*, not the connection
(:class:`Sequencer`): a device that lost its connection reconnects, sends ``resume`` with
its session id and carries on. A server restored from its state directory knows only the
*durable point* (the last persisted op); the device replays its requests from there and
the server skips the ops it had already applied. Requests made only of :data:`UNORDERED`
ops (``ping``, ``profile``, ``resume``) are answered outside the sequence.

This module holds no sockets: :class:`ServerProtocol` and :class:`DeviceProtocol` turn
bytes into checked Python values and back, so the rules can be tested without a network (the
style of the ``websockets`` and ``h11`` libraries).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_split.transport import wire
from lightning_split.transport.errors import ProtocolError, RemoteError, SessionError

__all__ = ["ProtocolError", "RemoteError", "SessionError"]  # re-exported: their home is transport.errors

VERSION = 1

_INT = (int,)
_NUM = (int, float)
_TENSOR = (torch.Tensor,)
_OPTIONAL_TENSOR = (torch.Tensor, type(None))

#: the fields that describe the model to the server (``hello`` and ``profile``).
_MODEL_FIELDS: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "init_args": (dict,),
    "fingerprint": (str,),
    "leaf_modules": (list,),
    "example": (dict,),
    "graph": (list,),
}

#: op name -> {field: accepted Python types}. Fields not listed are refused.
OPS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {
        **_MODEL_FIELDS,
        "spec": (dict,),
        "optimizers": (list,),
        "state": (dict,),
    },
    "forward": {
        "id": _INT,
        "values": (list,),
        "requires_grad": (list,),
        "training": (bool,),
        "grad": (bool,),
        "rng": _OPTIONAL_TENSOR,
    },
    "backward": {"id": _INT, "grads": (list,)},
    "release": {"ids": (list,)},
    "zero_grad": {"optimizer": _INT, "set_to_none": (bool,)},
    "grad_norms": {"optimizer": _INT, "norm_type": _NUM},
    "scale_grads": {"optimizer": _INT, "coefficient": _TENSOR},
    "clip_grad_value": {"optimizer": _INT, "value": _NUM},
    "step": {"optimizer": _INT, "hparams": (list,)},
    "state_dict": {},
    "optimizer_state": {"optimizer": _INT},
    "load_optimizer_state": {"optimizer": _INT, "state": (dict,)},
    "profile": {
        **_MODEL_FIELDS,
        "warmup": _INT,
        "repeats": _INT,
        "optimizers": (list,),
        "calibrate": (bool,),
    },
    "ping": {"payload": _OPTIONAL_TENSOR, "reply_bytes": _INT},
    "resume": {"session": (str,)},
    "close": {},
}

#: fields an op may leave out (the receiver then uses its default); every other listed field is required.
OPTIONAL: dict[str, frozenset[str]] = {
    "hello": frozenset({"leaf_modules", "graph"}),
    "profile": frozenset({"leaf_modules", "graph", "optimizers", "calibrate"}),
}

#: ops whose result the client does not wait for; they are sent with the next request.
DEFERRABLE = frozenset({"zero_grad", "scale_grads", "clip_grad_value", "step", "release"})

#: ops that change no session state: a request of only these is answered outside the
#: session's sequence (it neither needs nor consumes a sequence number).
UNORDERED = frozenset({"ping", "profile", "resume"})


@dataclass(frozen=True)
class Request:
    """A checked request. ``skip`` ops at its start were already applied (a replay after a restore)."""

    seq: int
    ops: list[dict[str, Any]]
    skip: int = 0

    @property
    def ordered(self) -> bool:
        """Whether the request belongs to the session's sequence (it changes session state)."""
        return not all(op["op"] in UNORDERED for op in self.ops)


def check_op(op: Any, index: int = 0) -> dict[str, Any]:
    """Validate one op against :data:`OPS`; return it unchanged or raise :class:`ProtocolError`."""
    if not isinstance(op, dict):
        raise ProtocolError(f"op {index}: expected an object, got {type(op).__name__}")
    name = op.get("op")
    if not isinstance(name, str) or name not in OPS:
        raise ProtocolError(f"op {index}: unknown op {name!r}; known ops: {', '.join(sorted(OPS))}")
    schema = OPS[name]
    extra = sorted(set(op) - set(schema) - {"op"})
    if extra:
        raise ProtocolError(f"op {index} ({name}): unexpected field(s) {', '.join(extra)}")
    for key, types in schema.items():
        if key not in op:
            if key in OPTIONAL.get(name, ()):
                continue
            raise ProtocolError(f"op {index} ({name}): missing field {key!r}")
        value = op[key]
        if isinstance(value, bool) and bool not in types:
            raise ProtocolError(f"op {index} ({name}): field {key!r} must be {_names(types)}, got a bool")
        if not isinstance(value, types):
            raise ProtocolError(
                f"op {index} ({name}): field {key!r} must be {_names(types)}, got {type(value).__name__}"
            )
    return op


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _decode(data: bytes | str, limits: wire.Limits, what: str) -> dict[str, Any]:
    """Decode one binary frame; text frames and undecodable bytes are protocol errors."""
    if isinstance(data, str):
        raise ProtocolError(f"text {what} received; the protocol uses binary messages only")
    try:
        return wire.decode(data, limits)
    except wire.WireError as exc:
        raise ProtocolError(f"undecodable {what}: {exc}") from exc


def encode_request(seq: int, ops: Sequence[Mapping[str, Any]]) -> bytes:
    return wire.encode({"v": VERSION, "seq": seq, "ops": list(ops)})


def encode_reply(seq: int, results: Sequence[Any], durable: int | None = None) -> bytes:
    payload: dict[str, Any] = {"v": VERSION, "seq": seq, "results": list(results)}
    if durable is not None:
        payload["durable"] = durable
    return wire.encode(payload)


def encode_error(seq: int | None, kind: str, message: str) -> bytes:
    return wire.encode({"v": VERSION, "seq": seq, "error": {"kind": kind, "message": message}})


@dataclass
class Sequencer:
    """The request order of one session; it outlives connections.

    Attributes:
        last_seq: the last request answered (or, after a restore, the durable one).
        last_reply: its reply, sent again if the device retries it (``None`` after a restore).
        applied_ops: after a restore, how many ops of request ``last_seq`` were applied
            before the state was persisted; a replay of that request skips them.
        durable: the last request whose effects (up to some op) are persisted, if any.
    """

    last_seq: int | None = None
    last_reply: bytes | None = None
    applied_ops: int | None = None
    durable: int | None = None

    def admit(self, request: Request) -> Request | bytes:
        """Decide what to do with an ordered request: run it (perhaps partly) or answer from the cache.

        Raises:
            ProtocolError: the request is out of order.
        """
        if request.seq == self.last_seq:
            if self.last_reply is not None:
                return self.last_reply
            if self.applied_ops is not None:
                return Request(request.seq, request.ops, skip=min(self.applied_ops, len(request.ops)))
        if self.last_seq is not None and request.seq != self.last_seq + 1:
            raise ProtocolError(f"request {request.seq} out of order: the last request was {self.last_seq}")
        return request

    def answered(self, request: Request, reply: bytes) -> None:
        self.last_seq, self.last_reply, self.applied_ops = request.seq, reply, None


@dataclass
class ServerProtocol:
    """Protocol state of one connection on the server side.

    Parses and checks messages; the order of requests is kept by the :class:`Sequencer` of
    the session the connection is attached to (a fresh one until ``hello`` or ``resume``).
    It does not run ops: the caller runs the :class:`Request` that :meth:`receive` returns
    and hands the results to :meth:`reply`.
    """

    limits: wire.Limits = field(default_factory=wire.Limits)
    sequencer: Sequencer = field(default_factory=Sequencer)
    attached: bool = False

    def receive(self, data: bytes | str) -> Request | bytes:
        """Parse one message. Returns a :class:`Request` to run, or the cached reply of a retry.

        Raises:
            ProtocolError: the message is malformed or out of order.
        """
        payload = _decode(data, self.limits, "message")
        if payload.get("v") != VERSION:
            raise ProtocolError(f"protocol version {payload.get('v')!r} is not supported (server speaks {VERSION})")
        seq, ops = payload.get("seq"), payload.get("ops")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ProtocolError(f"'seq' must be a non-negative integer, got {seq!r}")
        if not isinstance(ops, list) or not ops:
            raise ProtocolError("'ops' must be a non-empty list")
        checked = [check_op(op, index) for index, op in enumerate(ops)]
        request = Request(seq, checked)
        if not request.ordered:
            if any(op["op"] == "resume" for op in checked) and len(checked) > 1:
                raise ProtocolError("'resume' must be the only op of its request")
            return request
        if not self.attached and checked[0]["op"] != "hello":
            raise ProtocolError(
                f"the first op must be 'hello' (or 'resume' to continue a session), got {checked[0]['op']!r}"
            )
        if checked[0]["op"] == "hello":
            return request  # a new session starts its own sequence
        return self.sequencer.admit(request)

    def attach(self, sequencer: Sequencer) -> None:
        """Continue the sequence of a session (after ``hello`` or ``resume``)."""
        self.sequencer, self.attached = sequencer, True

    def reply(self, request: Request, results: Sequence[Any]) -> bytes:
        """Encode the results of a request that ran, and remember them for a retry."""
        if not request.ordered:
            return encode_reply(request.seq, results)
        data = encode_reply(request.seq, results, self.sequencer.durable)
        self.sequencer.answered(request, data)
        return data

    def error(self, request: Request | None, kind: str, message: str) -> bytes:
        """Encode an error reply; a request that failed counts as answered (its retry gets the same error)."""
        seq = request.seq if request is not None else None
        data = encode_error(seq, kind, message)
        if request is not None and request.ordered and self.attached:
            self.sequencer.answered(request, data)
        return data


@dataclass
class DeviceProtocol:
    """Protocol state of the device side: sequence numbers, deferred ops and the replay log.

    The replay log keeps each ordered request (its bytes) until the server reports it
    durable, so after a server restart the device can send again what was lost.
    """

    limits: wire.Limits = field(default_factory=wire.Limits)
    seq: int = -1
    deferred: list[dict[str, Any]] = field(default_factory=list)
    log: list[tuple[int, bytes]] = field(default_factory=list)
    keep_log: bool = False

    def defer(self, op: dict[str, Any]) -> None:
        """Queue an op that needs no answer; it goes out with the next request."""
        check_op(op)
        if op["op"] not in DEFERRABLE:
            raise ProtocolError(f"op {op['op']!r} needs an answer and cannot be deferred")
        self.deferred.append(op)

    def request(self, ops: Sequence[dict[str, Any]]) -> tuple[int, bytes, int]:
        """Encode the deferred ops followed by ``ops``; returns (seq, bytes, number of deferred ops).

        A request of only :data:`UNORDERED` ops carries no deferred ops and takes no new number.
        """
        for index, op in enumerate(ops):
            check_op(op, index)
        if all(op["op"] in UNORDERED for op in ops):
            return max(self.seq, 0), encode_request(max(self.seq, 0), list(ops)), 0
        self.seq += 1
        pending, self.deferred = self.deferred, []
        data = encode_request(self.seq, [*pending, *ops])
        if not self.keep_log:
            self.log.clear()
        self.log.append((self.seq, data))
        return self.seq, data, len(pending)

    def replay_from(self, seq: int) -> list[tuple[int, bytes]]:
        """The logged requests from ``seq`` on, to send again after a restore.

        Raises:
            ProtocolError: the log no longer holds request ``seq``.
        """
        if not self.log or self.log[0][0] > seq:
            oldest = self.log[0][0] if self.log else None
            raise ProtocolError(f"cannot replay from request {seq}: the device kept requests from {oldest} on")
        return [(s, data) for s, data in self.log if s >= seq]

    def receive(self, data: bytes | str, seq: int, skip: int) -> list[Any]:
        """Decode the reply to request ``seq``; return the results of the non-deferred ops."""
        payload = _decode(data, self.limits, "reply from the server")
        if "error" in payload:
            error = payload["error"] if isinstance(payload["error"], dict) else {}
            raise RemoteError(str(error.get("kind", "error")), str(error.get("message", payload["error"])))
        if payload.get("seq") != seq:
            raise ProtocolError(f"reply to request {payload.get('seq')!r} received while waiting for {seq}")
        results = payload.get("results")
        if not isinstance(results, list):
            raise ProtocolError("reply without a 'results' list")
        durable = payload.get("durable")
        if isinstance(durable, int) and not isinstance(durable, bool):
            self.log = [(s, d) for s, d in self.log if s >= durable]
        return results[skip:]
