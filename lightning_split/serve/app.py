"""``lightning-split serve``: the websocket app that runs the suffixes.

:class:`SplitServer` is the transport: one asyncio task per websocket connection,
bearer-token check at the handshake, ops run on a single compute thread (so sessions never
block each other's I/O and the accelerator sees one job at a time). Each op, a typed
message of :mod:`lightning_split.transport.messages`, goes to its handler through one table
from op class to method; ops that concern only a session are the session's
(:meth:`~lightning_split.serve.session.ServerSession.handle`), the others touch the
connection, the :class:`~lightning_split.serve.host.ModelHost` or the
:class:`~lightning_split.serve.sessions.SessionTable`.

The other pieces, one job each: :mod:`~lightning_split.serve.host` (the server's copy of the
model), :mod:`~lightning_split.serve.session` (one session's compute),
:mod:`~lightning_split.serve.sessions` (the sessions held), :mod:`~lightning_split.serve.store`
(sessions on disk) and :mod:`~lightning_split.serve.embedded` (this server on a thread, for
``SplitStrategy(server=None)``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import http
import logging
import ssl
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from lightning_split.graph.programs import SplitError
from lightning_split.serve.federation import HOLD_S, FederationTable, Waiting
from lightning_split.serve.fedstate import FederationStore
from lightning_split.serve.host import ModelHost
from lightning_split.serve.session import SESSION_OPS
from lightning_split.serve.sessions import SessionRecord, SessionTable
from lightning_split.serve.store import Point, StateStore
from lightning_split.transport import messages, protocol, wire
from lightning_split.transport.fragments import MAX_FRAGMENTS, Frame
from lightning_split.transport.protocol import SessionError

log = logging.getLogger("lightning_split.serve.app")


@dataclass
class ServerPolicy:
    """What one server accepts and keeps; every limit has a ``serve`` flag of the same name.

    Attributes:
        limits: wire limits for every message (size, tensor count, rank, dtypes).
        max_sessions: sessions held at once (connected or waiting for their device to resume).
        idle_timeout: seconds a connection may stay silent before the server closes it (the
            device reconnects and resumes transparently when it comes back).
        session_ttl: seconds a session whose connection dropped waits for ``resume`` before
            its memory is freed (it stays in ``state_dir`` when there is one).
        state_dir: where sessions are persisted at optimizer steps (``None``: in memory only).
        state_every: persist every this many optimizer steps.
        status_every: seconds between the log lines that show each federation (0: only when one changes).
    """

    limits: wire.Limits = field(default_factory=wire.Limits)
    max_sessions: int = 64
    idle_timeout: float = 600.0
    session_ttl: float = 300.0
    state_dir: Path | None = None
    state_every: int = 1
    status_every: float = 30.0


@dataclass
class _Connection:
    """One websocket connection: its protocol state and the session it speaks for (none until hello/resume)."""

    websocket: Any
    protocol: protocol.ServerProtocol
    record: SessionRecord | None = None

    def session_for(self, op: messages.Op) -> SessionRecord:
        if self.record is None:
            raise SessionError(f"op {op.name!r} before 'hello'")
        return self.record


#: an op's handler: the op, its connection, and the durable point should it persist the session.
_Handler = Callable[[Any, _Connection, Point], messages.Reply | None]


class SplitServer:
    """Serves split-learning sessions over websockets.

    One asyncio task per connection reads and writes; all compute runs on one thread, so
    many devices never block each other's I/O and the CPU or GPU sees one job at a time.
    Sessions outlive connections: a device that reconnects sends ``resume`` and continues
    (with ``policy.state_dir``, even after the server restarted).

    Args:
        host: builds the sessions.
        token: bearer token required at the handshake (``None``: no authentication).
        limits: wire limits (shorthand for ``policy.limits``).
        policy: limits, timeouts and persistence.
    """

    def __init__(
        self,
        host: ModelHost,
        token: str | None = None,
        limits: wire.Limits | None = None,
        policy: ServerPolicy | None = None,
    ) -> None:
        self.host = host
        self.token = token
        self.policy = policy or ServerPolicy()
        if limits is not None:
            self.policy = dataclasses.replace(self.policy, limits=limits)
        self.limits = self.policy.limits
        self.store = StateStore(self.policy.state_dir) if self.policy.state_dir is not None else None
        self.sessions = SessionTable(host, self.store, self.policy.max_sessions, self.policy.session_ttl)
        fed_store = FederationStore(self.policy.state_dir) if self.policy.state_dir is not None else None
        self.federations = FederationTable(store=fed_store)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="split-compute")
        self.handlers: dict[type[messages.Op], _Handler] = {
            **dict.fromkeys(SESSION_OPS, self._on_session_op),
            messages.Hello: self._on_hello,
            messages.Resume: self._on_resume,
            messages.Profile: lambda op, connection, point: self.host.profile(op),
            messages.Ping: self._on_ping,
            messages.Step: self._on_step,
            messages.LoadOptimizerState: self._on_load_optimizer_state,
            messages.Close: self._on_close,
            **dict.fromkeys((messages.FedJoin, messages.FedWait, messages.FedSubmit), self._on_federation),
        }

    def _authorize(self, connection: ServerConnection, request: HttpRequest) -> HttpResponse | None:
        if self.token is None:
            return None
        header = request.headers.get("Authorization", "")
        expected = f"Bearer {self.token}"
        if hmac.compare_digest(header.encode(), expected.encode()):
            return None
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token\n")

    async def handle(self, websocket: ServerConnection) -> None:
        """Serve one connection: requests answered in order, the session kept when it drops."""
        connection = _Connection(websocket, protocol.ServerProtocol(self.limits))
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(receive(websocket), self.policy.idle_timeout)
                except TimeoutError:
                    log.info("closing a connection idle for %g s (its session is kept)", self.policy.idle_timeout)
                    await websocket.close(1001, f"idle for {self.policy.idle_timeout:g} s; reconnect to resume")
                    break
                reply = await loop.run_in_executor(self.executor, self._answer, connection, message)
                held = loop.time()
                while isinstance(reply, Waiting):  # a fed_wait whose time has not come: wait off the compute thread
                    await reply.wait()
                    hold = loop.time() - held < HOLD_S
                    reply = await loop.run_in_executor(self.executor, self._answer, connection, message, hold)
                await websocket.send(reply.message)
        except ConnectionClosed:
            pass
        finally:
            self.sessions.detach(connection.record, websocket)

    def _answer(self, connection: _Connection, message: Any, hold: bool = True) -> Frame | Waiting:
        """The reply to one message of ``connection`` (on the compute thread); never raises.

        A ``fed_wait`` whose time has not come is not run but held (:class:`Waiting`) while ``hold``.
        """
        try:
            request = connection.protocol.receive(message)
        except protocol.ProtocolError as exc:
            return connection.protocol.error(None, "protocol", str(exc))
        except Exception as exc:  # a parser bug must not end the connection; report it like a protocol error
            log.error("undecodable message:\n%s", traceback.format_exc())
            return connection.protocol.error(None, "protocol", f"{type(exc).__name__}: {exc}")
        if isinstance(request, Frame):  # a retry: the reply already sent
            return request
        if hold and not self._federations_ready(request, connection):
            return self.federations.waiting()
        results: list[messages.Reply | None] = [None] * request.skip
        try:
            for index in range(request.skip, len(request.ops)):
                results.append(self._run(request.ops[index], connection, Point(request.seq, index + 1)))
        except (SessionError, SplitError, protocol.ProtocolError) as exc:
            return connection.protocol.error(request, type(exc).__name__, str(exc))
        except Exception as exc:  # a bug or a bad tensor: end this request, keep serving
            log.error("request %s failed:\n%s", request.seq, traceback.format_exc())
            return connection.protocol.error(request, "internal", f"{type(exc).__name__}: {exc}")
        try:
            return connection.protocol.reply(request, results)
        except (TypeError, ValueError) as exc:  # a result the wire cannot carry is a bug; keep serving
            log.error("reply to request %s cannot be encoded:\n%s", request.seq, traceback.format_exc())
            return connection.protocol.error(request, "internal", f"the reply cannot be encoded: {exc}")

    def _federations_ready(self, request: protocol.Request, connection: _Connection) -> bool:
        try:
            return all(self.federations.ready(op, connection.record) for op in request.ops[request.skip :])
        except Exception:  # a bug must not hold the request: run it, and let its handler report
            log.error("federation check failed:\n%s", traceback.format_exc())
            return True

    def _run(self, op: messages.Op, connection: _Connection, point: Point) -> messages.Reply | None:
        handler = self.handlers.get(type(op))
        if handler is None:
            raise SessionError(f"op {op.name!r} is not served")
        return handler(op, connection, point)

    # -- the handlers ----------------------------------------------------------------------

    def _on_hello(self, op: messages.Hello, connection: _Connection, point: Point) -> messages.HelloReply:
        record = self.sessions.open(op, connection.websocket)
        self.sessions.detach(connection.record, connection.websocket)
        connection.record = record
        connection.protocol.attach(record.sequencer, op.codec)
        self.sessions.persist(record, point)
        return messages.HelloReply(
            device=str(self.host.device),
            rng_sync=self.host.device.type == "cpu",
            session=record.id,
            persistent=self.store is not None,
        )

    def _on_resume(self, op: messages.Resume, connection: _Connection, point: Point) -> messages.ResumeReply:
        record, previous = self.sessions.reattach(op.session, connection.websocket)
        if previous is not None:
            log.info("session %s moved to a new connection", record.id)
            asyncio.run_coroutine_threadsafe(previous.close(1000, "session resumed on another connection"), self._loop)
        connection.record = record
        connection.protocol.attach(record.sequencer, record.description.get("codec", "none"))
        self.federations.attach(record)
        sequencer = record.sequencer
        return messages.ResumeReply(
            session=record.id,
            last_seq=sequencer.last_seq,
            have_reply=sequencer.last_reply is not None,
            durable=sequencer.durable,
        )

    def _on_ping(self, op: messages.Ping, connection: _Connection, point: Point) -> messages.PingReply:
        size = max(0, min(op.reply_bytes, self.limits.max_message_bytes // 2))
        return messages.PingReply(
            payload=torch.zeros(size, dtype=torch.uint8), hardware=self.host.hardware, torch=torch.__version__
        )

    def _on_session_op(self, op: messages.Op, connection: _Connection, point: Point) -> messages.Reply | None:
        return connection.session_for(op).session.handle(op)

    def _on_step(self, op: messages.Step, connection: _Connection, point: Point) -> None:
        record = connection.session_for(op)
        record.session.handle(op)
        record.steps += 1
        if record.steps % self.policy.state_every == 0:
            self.sessions.persist(record, point)

    def _on_load_optimizer_state(self, op: messages.LoadOptimizerState, connection: _Connection, point: Point) -> None:
        record = connection.session_for(op)
        record.session.handle(op)
        self.sessions.persist(record, point)

    def _on_federation(self, op: messages.Op, connection: _Connection, point: Point) -> messages.Reply | None:
        """A federation op: the federation is saved first, then the session (the order a restart relies on)."""
        reply = self.federations.handle(op, connection.record)
        if connection.record is not None:
            self.sessions.persist(connection.record, point)
        return reply

    def _on_close(self, op: messages.Close, connection: _Connection, point: Point) -> None:
        self.federations.leave(connection.session_for(op))
        self.sessions.close(connection.session_for(op))
        connection.record = None

    # -- lifetime --------------------------------------------------------------------------

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(0.05, self.policy.session_ttl / 4)))
            self.sessions.expire()

    async def _show_federations(self) -> None:
        while True:
            await asyncio.sleep(self.policy.status_every)
            await self._loop.run_in_executor(self.executor, self.federations.log_status)

    async def start(
        self, host: str = "127.0.0.1", port: int = 8765, ssl_context: ssl.SSLContext | None = None
    ) -> Server:
        """Start listening; returns the websockets ``Server`` (its sockets tell the bound port)."""
        self._loop = asyncio.get_running_loop()
        self._reaper = self._loop.create_task(self._reap())
        self.federations.bind(self._loop)
        if self.policy.status_every > 0:
            self._status = self._loop.create_task(self._show_federations())
        return await serve(
            self.handle,
            host,
            port,
            process_request=self._authorize,
            max_size=self.limits.max_message_bytes,
            compression=None,
            ssl=ssl_context,
            ping_interval=20,
            ping_timeout=60,
        )

    async def stop_reaper(self) -> None:
        """Stop the expiry and status tasks (call on the server's loop before it closes)."""
        for task in (getattr(self, "_reaper", None), getattr(self, "_status", None)):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def close(self) -> None:
        for task in (getattr(self, "_reaper", None), getattr(self, "_status", None)):
            if task is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(task.cancel)
        self.executor.shutdown(wait=False, cancel_futures=True)


async def receive(websocket: ServerConnection) -> str | bytes | list[bytes]:
    """The next message of ``websocket``: the fragments of a binary message as they came, or text.

    Not ``recv()``, which joins the fragments of a message (one copy of every tensor the
    device sent); :func:`~lightning_split.transport.wire.decode` reads them where they are.
    Past :data:`~lightning_split.transport.fragments.MAX_FRAGMENTS` fragments (more than this
    project's devices send) the rest are joined as they come, so a peer cannot make the list
    grow without bound (``max_size`` bounds the bytes). Of a text message (a protocol error)
    only the first fragment is kept.
    """
    parts: list[bytes] = []
    overflow = bytearray()
    text: str | None = None
    async for fragment in websocket.recv_streaming():
        if isinstance(fragment, str):
            text = fragment if text is None else text
        elif len(parts) < MAX_FRAGMENTS:
            parts.append(fragment)
        else:
            overflow += fragment
    if text is not None:
        return text
    if overflow:
        parts.append(bytes(overflow))
    return parts[0] if len(parts) == 1 else parts


def bound_url(server: Server, secure: bool = False) -> str:
    """``ws://host:port`` of a started server (the real port when 0 was asked for)."""
    sockname = next(iter(server.sockets)).getsockname()
    host = sockname[0]
    if ":" in host:
        host = f"[{host}]"
    return f"{'wss' if secure else 'ws'}://{host}:{sockname[1]}"
