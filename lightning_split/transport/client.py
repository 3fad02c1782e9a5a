"""The device's connection to a lightning-split server (synchronous websockets).

:meth:`RemoteServer.call` is a plain blocking exchange driven from the training thread: it
sends the deferred ops plus the ones given (typed messages of
:mod:`lightning_split.transport.messages`) and returns their checked replies. A pipelined
step (micro-batches) sends ahead instead: :meth:`RemoteServer.submit` returns at once and
the reply is read beside the training thread (:mod:`lightning_split.transport.inflight`).
The connection counts bytes and wire time for the logs and can emulate a slower link
(:mod:`lightning_split.transport.emulator`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from lightning_split.planning.profile import Link
from lightning_split.transport import messages, protocol, wire
from lightning_split.transport.emulator import LinkEmulator
from lightning_split.transport.errors import ConnectionFailed
from lightning_split.transport.fragments import Frame
from lightning_split.transport.inflight import InFlight, Reply

__all__ = ["TOKEN_ENV", "ConnectionFailed", "LinkEmulator", "RemoteServer", "Reply", "Traffic"]

TOKEN_ENV = "LIGHTNING_SPLIT_TOKEN"
log = logging.getLogger("lightning_split.transport.client")

# websockets 17.1 deprecates using connect()'s result outside a ``with`` block unless asked
# for with ``legacy=True`` (older versions have no such flag, and connect directly)
_DIRECT_CONNECT = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


class _Unreachable(ConnectionFailed):
    """The server is not reachable right now (worth retrying, unlike a refused handshake)."""


@dataclass
class Traffic:
    """Running totals of what crossed the link."""

    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    round_trip_s: float = 0.0
    server_compute_s: float = 0.0  # the server's own forward/backward time, as it reports

    def snapshot(self) -> Traffic:
        return dataclasses.replace(self)

    def since(self, earlier: Traffic) -> Traffic:
        """The difference of two snapshots (what one step or one log interval cost)."""
        return Traffic(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in dataclasses.fields(self)})


class RemoteServer:
    """One connection to a server, speaking :mod:`lightning_split.transport.protocol`.

    Args:
        url: ``ws://host:port`` or ``wss://host:port``.
        token: bearer token (default: the ``LIGHTNING_SPLIT_TOKEN`` environment variable).
        ca_file: CA bundle to verify a ``wss://`` server with (default: the system's).
        timeout: seconds to wait for the handshake and for each reply.
        limits: wire limits for replies.
        link_limit: emulate a slower link (see :class:`LinkEmulator`); ``None``: the real link as it is.
        retry_for: seconds to keep reconnecting, with exponential backoff, after the connection
            drops; the session resumes where it was (0: fail at once).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        ca_file: str | None = None,
        timeout: float = 300.0,
        limits: wire.Limits | None = None,
        link_limit: Link | str | None = None,
        retry_for: float = 120.0,
    ) -> None:
        self.url = url
        if isinstance(link_limit, str):
            link_limit = Link.parse(link_limit)
        self.emulator = LinkEmulator(link_limit) if link_limit is not None else None
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.ca_file = ca_file
        self.timeout = timeout
        self.protocol = protocol.DeviceProtocol(limits or wire.Limits())
        self.traffic = Traffic()
        self.retry_for = retry_for
        self.session_id: str | None = None
        self.reconnects = 0
        self._lock = threading.Lock()
        self._socket: ClientConnection | None = None
        self._in_flight = InFlight(self)

    def connect(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        context = None
        if self.url.startswith("wss://"):
            context = ssl.create_default_context(cafile=self.ca_file)
        try:
            self._socket = connect(
                self.url,
                additional_headers=headers,
                ssl=context,
                compression=None,
                max_size=self.protocol.limits.max_message_bytes,
                open_timeout=min(self.timeout, 30.0),
                proxy=None,
                ping_interval=20,
                ping_timeout=120,
                **_DIRECT_CONNECT,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = (
                f"set the token with SplitStrategy(token=...) or the {TOKEN_ENV} environment variable"
                if status == 401
                else "check the URL"
            )
            raise ConnectionFailed(f"server {self.url} refused the handshake with HTTP {status}: {hint}") from exc
        except ssl.SSLError as exc:
            raise ConnectionFailed(
                f"TLS handshake with {self.url} failed ({exc}); if the server uses a self-signed certificate or a "
                "private CA, pass it with SplitStrategy(ca_file=...)"
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise _Unreachable(
                f"cannot reach the lightning-split server at {self.url} ({exc}); is `lightning-split serve` running "
                "there, and is the port open?"
            ) from exc

    def defer(self, op: messages.Op) -> None:
        """Queue an op that needs no reply (it rides with the next call)."""
        with self._lock:
            self.protocol.defer(op)

    def call(self, ops: Sequence[messages.Op]) -> list[Any]:
        """Send the deferred ops and ``ops``; wait for and return the replies to ``ops``.

        Each reply is the op's ``reply`` class (``None`` for ops without one), checked.
        A dropped connection is retried for ``retry_for`` seconds; the request is identified
        by its sequence number, so it is applied exactly once however often it is sent.
        Requests submitted before are answered first.
        """
        self._in_flight.drain()
        with self._lock:
            if self._socket is None:
                self.connect()
            sent = self.protocol.request(ops)
            started = time.perf_counter()
            try:
                reply = self._exchange(sent.data)
            except (ConnectionClosed, OSError) as exc:
                reply = self._recover(sent, exc)
            elapsed = time.perf_counter() - started
            self.traffic.requests += 1
            self.traffic.bytes_up += len(sent.data)
            self.traffic.bytes_down += len(reply)
            self.traffic.round_trip_s += elapsed
            results = self.protocol.receive(reply, sent)
            for op, result in zip(sent.ops[sent.deferred :], results):
                if isinstance(result, messages.HelloReply):
                    self.session_id = result.session
                    self.protocol.keep(result.persistent)
                elif isinstance(op, messages.Close):
                    self.session_id = None
            return results

    def submit(self, ops: Sequence[messages.Op]) -> Reply:
        """Send the deferred ops and ``ops`` without waiting; :meth:`Reply.result` gives the replies to ``ops``.

        For forward and backward ops of a pipelined step: requests go out in the order they
        are submitted, and the server answers them in that order. A dropped connection is
        recovered (as by :meth:`call`) when the server lost at most one of the replies.
        """
        return self._in_flight.submit(list(ops))

    def _exchange(self, data: Frame | bytes) -> bytes:
        """One request, one reply, over the current socket (through the link emulator if any).

        The request goes out as the fragments of one message (its tensors' own memory). The
        reply is read whole: websockets' synchronous client copies each received frame once
        whether it joins them (``recv``) or not (``recv_streaming``, which has no timeout), and
        :func:`~lightning_split.transport.wire.decode` then views the large tensors in it.
        """
        assert self._socket is not None
        if self.emulator is not None:
            self.emulator.before_send(len(data))
        self._socket.send(data.message if isinstance(data, Frame) else data)
        try:
            reply = self._socket.recv(timeout=self.timeout)
            received = time.perf_counter()
        except TimeoutError as exc:
            raise ConnectionFailed(
                f"the server at {self.url} did not answer within {self.timeout:.0f} s; it may be overloaded "
                "or stuck: check its log, or raise SplitStrategy(timeout=...)"
            ) from exc
        if self.emulator is not None:
            self.emulator.after_receive(len(reply), received)
        if isinstance(reply, str):
            raise protocol.ProtocolError("text reply received; the protocol uses binary messages only")
        return reply

    def _recover(self, sent: protocol.Sent, error: BaseException) -> bytes:
        """Reconnect with backoff, resume the session and get the reply to ``sent``."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            if time.monotonic() + delay > deadline:
                raise ConnectionFailed(
                    f"lost the connection to {self.url} ({error}) and could not resume within {self.retry_for:g} s; "
                    "is the server running? Raise SplitStrategy(retry_for=...) to wait longer"
                ) from error
            log.warning("connection to %s lost (%s); reconnecting in %.2f s", self.url, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            self._drop_socket()
            try:
                self.connect()
                reply = self._resend(sent)
            except (_Unreachable, ConnectionClosed, OSError) as exc:
                error = exc
                continue
            self.reconnects += 1
            return reply

    def _resend(self, sent: protocol.Sent) -> bytes:
        """On a fresh connection: resume the session, replay what the server lacks, resend ``sent``."""
        if self.session_id is None or not sent.ordered:
            return self._exchange(sent.data)
        resume = self.protocol.request([messages.Resume(session=self.session_id)])
        try:
            (info,) = self.protocol.receive(self._exchange(resume.data), resume)
        except protocol.RemoteError as exc:
            raise ConnectionFailed(f"the server at {self.url} cannot resume this session: {exc.message}") from exc
        if info.have_reply or info.durable is None:
            pending = [sent]
        else:
            pending = self.protocol.replay_from(info.last_seq)
            log.warning("server restored the session at request %s; replaying %d requests", info.last_seq, len(pending))
        if pending[-1].seq != sent.seq:
            raise protocol.ProtocolError(f"replay log ends at request {pending[-1].seq}, not {sent.seq}")
        for earlier in pending[:-1]:
            try:
                self.protocol.receive(self._exchange(earlier.data), earlier)
            except protocol.RemoteError as exc:
                raise ConnectionFailed(
                    f"replaying request {earlier.seq} after the server restarted failed: {exc.message}"
                ) from exc
        return self._exchange(pending[-1].data)

    def _drop_socket(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                self._socket.close()
            self._socket = None

    def close(self) -> None:
        self._in_flight.drain()
        self._in_flight.close()
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
