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
the server skips the ops it had already applied (their results are ``None``, and the reply
says how many under ``"skipped"``). Requests made only of *unordered* ops (``ping``,
``profile``, ``resume``) are answered outside the sequence.

Messages are :class:`~lightning_split.transport.fragments.Frame` objects: the frame's bytes as
fragments that point into the tensors they carry (no copy of tensor bytes before the socket).
A frame kept past its exchange must not see its tensors change; the rule for the two frames
this module keeps is stated at :class:`Sequencer` (the server's last reply) and
:class:`DeviceProtocol` (the device's requests).

Each op and each result is a typed message of :mod:`lightning_split.transport.messages`,
checked on both sides. This module holds no sockets: :class:`ServerProtocol` and
:class:`DeviceProtocol` turn bytes into checked messages and back, so the rules can be
tested without a network (the style of the ``websockets`` and ``h11`` libraries).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_split.transport import coding, wire
from lightning_split.transport.codecs import CODECS, Codec
from lightning_split.transport.errors import ProtocolError, RemoteError, SessionError
from lightning_split.transport.fragments import Frame
from lightning_split.transport.messages import OPS, Hello, Op, Reply, Resume, op_from_wire

__all__ = [
    "VERSION",
    "DeviceProtocol",
    "ProtocolError",
    "RemoteError",
    "Request",
    "Sent",
    "Sequencer",
    "ServerProtocol",
    "SessionError",
    "encode_error",
    "encode_reply",
    "encode_request",
    "error_frame",
    "reply_frame",
    "request_frame",
]

VERSION = 1


@dataclass(frozen=True)
class Request:
    """A checked request. ``skip`` ops at its start were already applied (a replay after a restore)."""

    seq: int
    ops: tuple[Op, ...]
    skip: int = 0

    @property
    def ordered(self) -> bool:
        """Whether the request belongs to the session's sequence (it changes session state)."""
        return not all(op.unordered for op in self.ops)


def _decode(data: wire.Message | str, limits: wire.Limits, what: str) -> dict[str, Any]:
    """Decode one binary frame; text frames and undecodable bytes are protocol errors."""
    if isinstance(data, str):
        raise ProtocolError(f"text {what} received; the protocol uses binary messages only")
    try:
        return wire.decode(data, limits)
    except wire.WireError as exc:
        raise ProtocolError(f"undecodable {what}: {exc}") from exc


def request_frame(seq: int, ops: Sequence[Op], codec: Codec = CODECS["none"], clock: Any = None) -> Frame:
    """A request of ``ops``; the tensors that cross the cut are written with ``codec``."""
    wired = [coding.pack(op.to_wire(), coding.coded_field(type(op)), codec, clock) for op in ops]
    return wire.encode_fragments({"v": VERSION, "seq": seq, "ops": wired})


def encode_request(seq: int, ops: Sequence[Op], codec: Codec = CODECS["none"], clock: Any = None) -> bytes:
    """:func:`request_frame` as one bytes object."""
    return bytes(request_frame(seq, ops, codec, clock))


def reply_frame(
    seq: int,
    results: Sequence[Reply | None],
    durable: int | None = None,
    skipped: int = 0,
    codec: Codec = CODECS["none"],
    clock: Any = None,
) -> Frame:
    """A reply: the result of every op of request ``seq`` (``None`` for ops without one), coded with ``codec``.

    ``skipped`` ops at the start were applied before a restore and have ``None`` results; the
    key is written only then, so the bytes of every other reply are those of earlier versions.
    """
    payload: dict[str, Any] = {
        "v": VERSION,
        "seq": seq,
        "results": [_wire_result(result, codec, clock) for result in results],
    }
    if durable is not None:
        payload["durable"] = durable
    if skipped:
        payload["skipped"] = skipped
    return wire.encode_fragments(payload)


def encode_reply(
    seq: int,
    results: Sequence[Reply | None],
    durable: int | None = None,
    skipped: int = 0,
    codec: Codec = CODECS["none"],
    clock: Any = None,
) -> bytes:
    """:func:`reply_frame` as one bytes object."""
    return bytes(reply_frame(seq, results, durable, skipped, codec, clock))


def _wire_result(result: Reply | None, codec: Codec, clock: Any) -> Any:
    return None if result is None else coding.pack(result.to_wire(), coding.coded_field(type(result)), codec, clock)


def error_frame(seq: int | None, kind: str, message: str) -> Frame:
    """An error reply to request ``seq`` (``None``: a message that was no request)."""
    return wire.encode_fragments({"v": VERSION, "seq": seq, "error": {"kind": kind, "message": message}})


def encode_error(seq: int | None, kind: str, message: str) -> bytes:
    """:func:`error_frame` as one bytes object."""
    return bytes(error_frame(seq, kind, message))


def _where(index: int, op: Any) -> str:
    """How errors name op ``index`` of a request: by position, and by name when it is a known op."""
    name = op.name if isinstance(op, Op) else op.get("op") if isinstance(op, dict) else None
    return f"op {index} ({name})" if isinstance(name, str) and name in OPS else f"op {index}"


@dataclass
class Sequencer:
    """The request order of one session; it outlives connections.

    Attributes:
        last_seq: the last request answered (or, after a restore, the durable one).
        last_reply: its reply, sent again if the device retries it (``None`` after a restore).
            It is kept as the frame that was sent, pointing into the tensors of the reply:
            a retry may come after other ops ran (the device's next connection; other
            sessions' ops on a shared server part), so **every tensor a reply carries must be
            made for that reply and written by nothing afterwards**. The server's handlers
            keep to it: forward outputs, cut gradients, norms and random states are computed
            by the op; ops that report live state (``state_dict``, ``optimizer_state``, a
            forward output that is a parameter or buffer) send copies
            (:mod:`lightning_split.serve.session`); federation parts are replaced, never
            written in place. So a retry gets the bytes of the first answer. It is never
            persisted (a restored session has none).
        applied_ops: after a restore, how many ops of request ``last_seq`` were applied
            before the state was persisted; a replay of that request skips them.
        durable: the last request whose effects (up to some op) are persisted, if any.
    """

    last_seq: int | None = None
    last_reply: Frame | None = None
    applied_ops: int | None = None
    durable: int | None = None

    def admit(self, request: Request) -> Request | Frame:
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

    def answered(self, request: Request, reply: Frame) -> None:
        self.last_seq, self.last_reply, self.applied_ops = request.seq, reply, None


@dataclass
class ServerProtocol:
    """Protocol state of one connection on the server side.

    Parses and checks messages (each op into its :mod:`~lightning_split.transport.messages`
    class); the order of requests is kept by the :class:`Sequencer` of the session the
    connection is attached to (a fresh one until ``hello`` or ``resume``). It does not run
    ops: the caller runs the :class:`Request` that :meth:`receive` returns and hands the
    results to :meth:`reply`.
    """

    limits: wire.Limits = field(default_factory=wire.Limits)
    sequencer: Sequencer = field(default_factory=Sequencer)
    attached: bool = False
    codec: Codec = field(default_factory=lambda: CODECS["none"])  # the attached session's (negotiated in hello)
    clock: coding.CodecClock = field(default_factory=coding.CodecClock)

    def receive(self, data: wire.Message | str) -> Request | Frame:
        """Parse one message. Returns a :class:`Request` to run, or the cached reply of a retry.

        Raises:
            ProtocolError: the message is malformed or out of order.
        """
        payload = _decode(data, self.limits, "message")
        if payload.get("v") != VERSION:
            raise ProtocolError(f"protocol version {payload.get('v')!r} is not supported (server speaks {VERSION})")
        seq, ops = payload.get("seq"), payload.get("ops")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ProtocolError(f"'seq' must be a non-negative integer, got {seq!r}", "seq")
        if not isinstance(ops, list) or not ops:
            raise ProtocolError("'ops' must be a non-empty list", "ops")
        request = Request(seq, tuple(self._op(index, op) for index, op in enumerate(ops)))
        first = request.ops[0]
        if not request.ordered:
            if any(isinstance(op, Resume) for op in request.ops) and len(request.ops) > 1:
                raise ProtocolError("'resume' must be the only op of its request")
            return request
        if not self.attached and not isinstance(first, Hello):
            raise ProtocolError(f"the first op must be 'hello' (or 'resume' to continue a session), got {first.name!r}")
        if isinstance(first, Hello):
            return request  # a new session starts its own sequence
        return self.sequencer.admit(request)

    def _op(self, index: int, value: Any) -> Op:
        where = _where(index, value)
        try:
            return op_from_wire(coding.unpack(value, coding.op_field(value), self.codec, self.clock), where)
        except ProtocolError as exc:
            raise exc.at(where) if exc.where is None else exc from None

    def attach(self, sequencer: Sequencer, codec: str = "none") -> None:
        """Continue the sequence of a session (after ``hello`` or ``resume``) with its codec."""
        self.sequencer, self.attached, self.codec = sequencer, True, CODECS[codec]

    def reply(self, request: Request, results: Sequence[Reply | None]) -> Frame:
        """Encode the results of a request that ran, and remember them for a retry (see :class:`Sequencer`)."""
        if not request.ordered:
            return reply_frame(request.seq, results)
        data = reply_frame(request.seq, results, self.sequencer.durable, request.skip, self.codec, self.clock)
        self.sequencer.answered(request, data)
        return data

    def error(self, request: Request | None, kind: str, message: str) -> Frame:
        """Encode an error reply; a request that failed counts as answered (its retry gets the same error)."""
        seq = request.seq if request is not None else None
        data = error_frame(seq, kind, message)
        if request is not None and request.ordered and self.attached:
            self.sequencer.answered(request, data)
        return data


@dataclass(frozen=True)
class Sent:
    """A request as the device sent it: its number, its frame, and its ops, the deferred ones first."""

    seq: int
    data: Frame
    ops: tuple[Op, ...]
    deferred: int = 0

    @property
    def ordered(self) -> bool:
        """Whether the request belongs to the session's sequence (see :attr:`Request.ordered`)."""
        return not all(op.unordered for op in self.ops)


@dataclass
class DeviceProtocol:
    """Protocol state of the device side: sequence numbers, deferred ops and the replay log.

    The replay log keeps each ordered request until the server reports it durable, so after
    a server restart the device can send again what was lost.

    A request's frame points into the tensors of its ops (cut values, gradients, states):
    the caller must not write them until the request's reply was read, since a request may be
    sent again until then (after a dropped connection). A call blocks its caller meanwhile,
    and a submitted micro-batch's tensors belong to its step, which reads the reply before
    it goes on. With ``keep_log`` a request may be sent again later, after steps that did
    write them (a replay after the server restored): those requests are materialised when
    they are encoded (one copy each, as every request cost before fragments).
    """

    limits: wire.Limits = field(default_factory=wire.Limits)
    seq: int = -1
    deferred: list[Op] = field(default_factory=list)
    log: list[Sent] = field(default_factory=list)
    keep_log: bool = False
    codec: Codec = field(default_factory=lambda: CODECS["none"])  # set by the hello this side sends
    clock: coding.CodecClock = field(default_factory=coding.CodecClock)

    def keep(self, persistent: bool) -> None:
        """Keep the replay log (the server persists the session) or not; the requests logged so far are materialised."""
        self.keep_log = persistent
        if persistent:
            self.log = [dataclasses.replace(sent, data=sent.data.materialize()) for sent in self.log]

    def defer(self, op: Op) -> None:
        """Queue an op that needs no answer; it goes out with the next request."""
        if not op.deferrable:
            raise ProtocolError(f"op {op.name!r} needs an answer and cannot be deferred")
        self.deferred.append(op)

    def request(self, ops: Sequence[Op]) -> Sent:
        """Encode the deferred ops followed by ``ops``.

        A request of only unordered ops (``ping``, ``profile``, ``resume``) carries no deferred
        ops and takes no new number.
        """
        if not ops:
            raise ProtocolError("a request needs at least one op")
        if all(op.unordered for op in ops):
            seq = max(self.seq, 0)
            return Sent(seq, request_frame(seq, ops), tuple(ops))
        self.seq += 1
        every = (*self.deferred, *ops)
        frame = request_frame(self.seq, every, self.codec, self.clock)
        sent = Sent(self.seq, frame.materialize() if self.keep_log else frame, every, len(self.deferred))
        for op in every:
            if isinstance(op, Hello):
                self.codec = CODECS[op.codec]  # the session's tensors use it from the next request on
        self.deferred = []
        if not self.keep_log:
            self.log.clear()
        self.log.append(sent)
        return sent

    def _reply(self, index: int, op: Op, result: Any) -> Reply | None:
        where = f"reply to {_where(index, op)}"
        try:
            result = coding.unpack(result, coding.coded_field(op.reply), self.codec, self.clock)
        except ProtocolError as exc:
            raise exc.at(where) from None
        return op.reply_from_wire(result, where)

    def replay_from(self, seq: int) -> list[Sent]:
        """The logged requests from ``seq`` on, to send again after a restore.

        Raises:
            ProtocolError: the log no longer holds request ``seq``.
        """
        if not self.log or self.log[0].seq > seq:
            oldest = self.log[0].seq if self.log else None
            raise ProtocolError(f"cannot replay from request {seq}: the device kept requests from {oldest} on")
        return [sent for sent in self.log if sent.seq >= seq]

    def receive(self, data: wire.Message | str, sent: Sent) -> list[Reply | None]:
        """Decode and check the reply to ``sent``; return the results of its non-deferred ops.

        Raises:
            RemoteError: the server answered with an error.
            ProtocolError: the reply is malformed, or a result is not what its op returns.
        """
        payload = _decode(data, self.limits, "reply from the server")
        if "error" in payload:
            error = payload["error"] if isinstance(payload["error"], dict) else {}
            raise RemoteError(str(error.get("kind", "error")), str(error.get("message", payload["error"])))
        if payload.get("seq") != sent.seq:
            raise ProtocolError(f"reply to request {payload.get('seq')!r} received while waiting for {sent.seq}")
        results, skipped = payload.get("results"), payload.get("skipped", 0)
        if not isinstance(results, list) or len(results) != len(sent.ops):
            raise ProtocolError(f"the reply to request {sent.seq} must carry a 'results' list of {len(sent.ops)}")
        if not isinstance(skipped, int) or isinstance(skipped, bool) or not 0 <= skipped <= len(results):
            raise ProtocolError(f"'skipped' must be an integer from 0 to {len(results)}, got {skipped!r}", "skipped")
        replies = [
            None if index < skipped and result is None else self._reply(index, op, result)
            for index, (op, result) in enumerate(zip(sent.ops, results))
        ]
        durable = payload.get("durable")
        if isinstance(durable, int) and not isinstance(durable, bool):
            self.log = [entry for entry in self.log if entry.seq >= durable]
        return replies[sent.deferred :]
