"""The lightning-split protocol, sans I/O: requests, replies and their rules.

A *request* is one websocket binary message from the device: a sequence number and a list
of *ops* the server runs in order (``zero_grad``, ``forward``, ``step``, ...). Ops that need
no answer (``zero_grad``, ``step``, ``release``) are deferred by the client and ride along
with the next op that does, so a training step costs two round trips (forward, backward),
as the cost model assumes. A *reply* carries the results of every op, or an error.

Every request has a sequence number one higher than the last; a request with the number
of the last one is a retry (after a dropped connection) and gets the same reply again,
never a second application. This module holds no sockets: :class:`ServerConnection` and
:class:`ClientConnection` turn bytes into checked Python values and back, so the rules can
be tested without a network (the style of the ``websockets`` and ``h11`` libraries).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_split import wire

VERSION = 1

_INT = (int,)
_NUM = (int, float)
_TENSOR = (torch.Tensor,)
_OPTIONAL_TENSOR = (torch.Tensor, type(None))

#: op name -> {field: accepted Python types}. Fields not listed are refused.
OPS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {
        "model": (str,),
        "init_args": (dict,),
        "fingerprint": (str,),
        "leaf_modules": (list,),
        "example": (dict,),
        "graph": (list,),
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
        "model": (str,),
        "init_args": (dict,),
        "fingerprint": (str,),
        "leaf_modules": (list,),
        "example": (dict,),
        "graph": (list,),
        "warmup": _INT,
        "repeats": _INT,
    },
    "ping": {"payload": _OPTIONAL_TENSOR, "reply_bytes": _INT},
    "close": {},
}

#: ops whose result the client does not wait for; they are sent with the next request.
DEFERRABLE = frozenset({"zero_grad", "scale_grads", "clip_grad_value", "step", "release"})


class ProtocolError(ValueError):
    """A message breaks the protocol; the text names the field and the rule."""


class RemoteError(RuntimeError):
    """The server refused or failed a request; carries the server's explanation."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"server error ({kind}): {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Request:
    seq: int
    ops: list[dict[str, Any]]


def check_op(op: Any, index: int = 0) -> dict[str, Any]:
    """Validate one op against :data:`OPS`; return it unchanged or raise :class:`ProtocolError`."""
    if not isinstance(op, dict):
        raise ProtocolError(f"op {index}: expected an object, got {type(op).__name__}")
    name = op.get("op")
    if name not in OPS:
        raise ProtocolError(f"op {index}: unknown op {name!r}; known ops: {', '.join(sorted(OPS))}")
    schema = OPS[name]
    extra = sorted(set(op) - set(schema) - {"op"})
    if extra:
        raise ProtocolError(f"op {index} ({name}): unexpected field(s) {', '.join(extra)}")
    for key, types in schema.items():
        if key not in op:
            if name in ("hello", "profile") and key in ("leaf_modules", "graph"):
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


def encode_reply(seq: int, results: Sequence[Any]) -> bytes:
    return wire.encode({"v": VERSION, "seq": seq, "results": list(results)})


def encode_error(seq: int | None, kind: str, message: str) -> bytes:
    return wire.encode({"v": VERSION, "seq": seq, "error": {"kind": kind, "message": message}})


@dataclass
class ServerConnection:
    """Protocol state of one connection on the server side.

    Tracks the sequence numbers and the last reply (for retries). It does not run ops: the
    caller runs the :class:`Request` that :meth:`receive` returns and hands the results
    to :meth:`reply`.
    """

    limits: wire.Limits = field(default_factory=wire.Limits)
    last_seq: int | None = None
    last_reply: bytes | None = None
    opened: bool = False

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
        if seq == self.last_seq and self.last_reply is not None:
            return self.last_reply
        if self.last_seq is not None and seq != self.last_seq + 1:
            raise ProtocolError(f"request {seq} out of order: the last request was {self.last_seq}")
        checked = [check_op(op, index) for index, op in enumerate(ops)]
        if not self.opened and checked[0]["op"] not in ("hello", "ping", "profile"):
            raise ProtocolError(f"the first op must be 'hello', 'profile' or 'ping', got {checked[0]['op']!r}")
        return Request(seq, checked)

    def reply(self, request: Request, results: Sequence[Any]) -> bytes:
        """Encode the results of a request that ran, and remember them for a retry."""
        data = encode_reply(request.seq, results)
        self.last_seq, self.last_reply = request.seq, data
        if any(op["op"] == "hello" for op in request.ops):
            self.opened = True
        return data

    def error(self, request: Request | None, kind: str, message: str) -> bytes:
        """Encode an error reply; a request that failed counts as answered (its retry gets the same error)."""
        seq = request.seq if request is not None else None
        data = encode_error(seq, kind, message)
        if request is not None:
            self.last_seq, self.last_reply = request.seq, data
        return data


@dataclass
class ClientConnection:
    """Protocol state of the device side: sequence numbers and deferred ops."""

    limits: wire.Limits = field(default_factory=wire.Limits)
    seq: int = -1
    deferred: list[dict[str, Any]] = field(default_factory=list)

    def defer(self, op: dict[str, Any]) -> None:
        """Queue an op that needs no answer; it goes out with the next request."""
        check_op(op)
        if op["op"] not in DEFERRABLE:
            raise ProtocolError(f"op {op['op']!r} needs an answer and cannot be deferred")
        self.deferred.append(op)

    def request(self, ops: Sequence[dict[str, Any]]) -> tuple[int, bytes, int]:
        """Encode the deferred ops followed by ``ops``; returns (seq, bytes, number of deferred ops)."""
        for index, op in enumerate(ops):
            check_op(op, index)
        self.seq += 1
        pending, self.deferred = self.deferred, []
        return self.seq, encode_request(self.seq, [*pending, *ops]), len(pending)

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
        return results[skip:]
