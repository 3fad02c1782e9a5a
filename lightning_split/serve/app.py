"""``lightning-split serve``: the websocket server that runs the suffixes.

Three small pieces, one job each:

- :class:`ModelHost` turns a ``hello`` op into a :class:`~lightning_split.serve.session.ServerSession`:
  it instantiates the server's own copy of the model class, traces it, checks that the
  graph matches the device's, and builds the suffix.
- :class:`SplitServer` is the transport: one asyncio task per websocket connection,
  bearer-token check at the handshake, ops run on a single compute thread (so sessions
  never block each other's I/O and the accelerator sees one job at a time).
- :class:`EmbeddedServer` runs the same server on a thread of this process, on loopback,
  for ``SplitStrategy(server=None)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import gc
import hmac
import http
import logging
import os
import re
import secrets
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from lightning_split.costs.measure import hardware_name
from lightning_split.graph.capture import TracedModel, TraceError, trace_module
from lightning_split.graph.programs import SplitError, SplitSpec, graph_summary, make_spec, materialize_skeleton
from lightning_split.serve.session import ServerSession
from lightning_split.transport import protocol, wire
from lightning_split.transport.optimizers import OptimizerSpec, resolve_optimizer
from lightning_split.transport.protocol import SessionError

log = logging.getLogger("lightning_split.serve.app")

ModelFactory = Callable[[Mapping[str, Any]], nn.Module]


class ModelHost:
    """Builds sessions for one model class from the devices' ``hello`` ops.

    Args:
        factory: makes a fresh model from init arguments (JSON values).
        name: the ``pkg.module:Class`` this host serves; a device naming another class is refused.
        device: where suffixes run.
        init_args: if given, used instead of the init arguments devices send.
    """

    def __init__(
        self,
        factory: ModelFactory,
        name: str,
        device: str | torch.device = "cpu",
        init_args: Mapping[str, Any] | None = None,
    ) -> None:
        self.factory = factory
        self.name = name
        self.device = torch.device(device)
        self.init_args = dict(init_args) if init_args is not None else None

    def open(self, hello: Mapping[str, Any]) -> ServerSession:
        """Check a ``hello`` against the server's own model and build the session."""
        with torch.random.fork_rng(devices=[]):  # building a session must not move anyone's random stream
            return self._open(hello)

    def profile(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Measure forward+backward seconds of every node of the server's copy of the model.

        ``request`` describes the model as a ``hello`` does (without a placement). The
        timings are of this server's device, on zero tensors of the device's shapes. With
        ``optimizers`` (descriptions as in ``hello``), one step of each, rebuilt from
        ``torch.optim`` over copies of this server's parameters, is added to the parameter
        nodes; ``calibrate`` (default true) scales the nodes to whole forward+backward passes
        (see :func:`lightning_split.costs.measure.time_node_costs`). The reply's ``calibration``
        says by how much, ``optimizer_node_s`` what each node got of the optimizer steps.
        """
        from lightning_split.costs.measure import time_node_costs

        optimizers = request.get("optimizers", [])
        for description in optimizers:  # refuse a malformed or foreign optimizer before any timing
            resolve_optimizer(OptimizerSpec.from_json(description).class_name)
        with torch.random.fork_rng(devices=[]):
            traced, example = self._trace(request)
            started = time.perf_counter()
            timed = time_node_costs(
                traced,
                tuple(example["args"]),
                dict(example["kwargs"]),
                device=self.device,
                warmup=max(0, min(int(request["warmup"]), 20)),
                repeats=max(1, min(int(request["repeats"]), 50)),
                calibrate=bool(request.get("calibrate", True)),
                optimizers=optimizers,
            )
        return {
            "node_s": timed.node_s,
            "calibration": timed.details(),
            "optimizer_node_s": timed.optimizer_node_s,
            "device": str(self.device),
            "hardware": hardware_name(self.device),
            "measure_s": time.perf_counter() - started,
        }

    def _trace(self, hello: Mapping[str, Any]) -> tuple[TracedModel, dict[str, Any]]:
        """Instantiate the model, trace it on the device's shapes, check it is the device's graph."""
        if hello["model"] != self.name:
            raise SessionError(
                f"this server serves {self.name}, the device trains {hello['model']}: start the server with "
                f"--model {hello['model']}"
            )
        init_args = self.init_args if self.init_args is not None else hello["init_args"]
        try:
            model = self.factory(init_args)
        except Exception as exc:
            raise SessionError(
                f"cannot instantiate {self.name}({_short(init_args)}): {type(exc).__name__}: {exc}"
            ) from exc
        try:
            example = materialize_skeleton(hello["example"])
            traced = trace_module(model, tuple(example["args"]), dict(example["kwargs"]), hello.get("leaf_modules", ()))
        except (SplitError, TraceError, KeyError, TypeError) as exc:
            raise SessionError(f"the server cannot trace its {self.name}: {exc}") from exc
        if traced.fingerprint() != hello["fingerprint"]:
            raise SessionError(
                f"the server's {self.name} traces to a different graph than the device's: "
                f"{_first_difference(hello.get('graph'), graph_summary(traced.graph_module))}. "
                "Are both sides running the same model version and init arguments?"
            )
        return traced, example

    def _open(self, hello: Mapping[str, Any]) -> ServerSession:
        traced, _ = self._trace(hello)
        graph = traced.graph_module
        try:
            spec = SplitSpec.from_json(hello["spec"])
            derived = make_spec(graph, spec.server_nodes)
        except SplitError as exc:
            raise SessionError(str(exc)) from exc
        if derived != spec:
            raise SessionError(f"placement disagrees with the server's graph: device {spec}, server {derived}")
        optimizers = [OptimizerSpec.from_json(o) for o in hello["optimizers"]]
        state = hello["state"]
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise SessionError("hello 'state' must map state keys to tensors")
        cut_meta = [traced.node(name).out_meta for name in spec.cut]
        return ServerSession(graph, spec, state, optimizers, device=self.device, cut_meta=cut_meta)


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
    """

    limits: wire.Limits = field(default_factory=wire.Limits)
    max_sessions: int = 64
    idle_timeout: float = 600.0
    session_ttl: float = 300.0
    state_dir: Path | None = None
    state_every: int = 1


@dataclass
class _Session:
    """A server session and what outlives its connections: id, description, request order."""

    id: str
    session: ServerSession
    description: dict[str, Any]  # the hello without the state tensors, for a restore
    sequencer: protocol.Sequencer = field(default_factory=protocol.Sequencer)
    steps: int = 0
    connection: Any = None
    detached_at: float | None = None


@dataclass
class _Attachment:
    """The session one connection speaks for (none until ``hello`` or ``resume``)."""

    record: _Session | None = None


_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


class StateStore:
    """Persists sessions in a directory, one file each, written atomically in the wire format.

    A file holds the session's description (its ``hello`` without tensors), a snapshot
    (suffix state, gradients, optimizer state) and the *durable point*: the request and the
    number of its ops the snapshot includes. Nothing in it is ever unpickled or executed.
    """

    def __init__(self, directory: str | Path, limits: wire.Limits | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.limits = limits or wire.Limits(max_message_bytes=2**40)

    def path(self, session_id: str) -> Path:
        if not _SESSION_ID.match(session_id):
            raise SessionError(f"malformed session id {session_id[:40]!r}")
        return self.directory / f"{session_id}.lsw"

    def save(self, record: _Session, seq: int, applied_ops: int) -> None:
        data = wire.encode(
            {
                "description": record.description,
                "snapshot": record.session.snapshot(),
                "durable": [seq, applied_ops],
                "steps": record.steps,
            }
        )
        target = self.path(record.id)
        temporary = target.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def load(self, session_id: str) -> dict[str, Any] | None:
        path = self.path(session_id)
        if not path.exists():
            return None
        try:
            return wire.decode(path.read_bytes(), self.limits)
        except (OSError, wire.WireError) as exc:
            raise SessionError(f"the saved session {session_id} cannot be read: {exc}") from exc

    def delete(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(session_id).unlink()


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
        self.sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="split-compute")

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
        connection = protocol.ServerProtocol(self.limits)
        attachment = _Attachment()
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(websocket.recv(), self.policy.idle_timeout)
                except TimeoutError:
                    log.info("closing a connection idle for %g s (its session is kept)", self.policy.idle_timeout)
                    await websocket.close(1001, f"idle for {self.policy.idle_timeout:g} s; reconnect to resume")
                    break
                reply = await loop.run_in_executor(
                    self.executor, self._answer, connection, attachment, websocket, message
                )
                await websocket.send(reply)
        except ConnectionClosed:
            pass
        finally:
            self._detach(attachment.record, websocket)

    def _answer(
        self, connection: protocol.ServerProtocol, attachment: _Attachment, websocket: Any, message: Any
    ) -> bytes:
        try:
            request = connection.receive(message)
        except protocol.ProtocolError as exc:
            return connection.error(None, "protocol", str(exc))
        except Exception as exc:  # a parser bug must not end the connection; report it like a protocol error
            log.error("undecodable message:\n%s", traceback.format_exc())
            return connection.error(None, "protocol", f"{type(exc).__name__}: {exc}")
        if isinstance(request, bytes):
            return request
        results: list[Any] = [None] * request.skip
        try:
            for index in range(request.skip, len(request.ops)):
                results.append(self._run(connection, attachment, websocket, request, index))
        except (SessionError, SplitError, protocol.ProtocolError) as exc:
            return connection.error(request, type(exc).__name__, str(exc))
        except Exception as exc:  # a bug or a bad tensor: end this request, keep serving
            log.error("request %s failed:\n%s", request.seq, traceback.format_exc())
            return connection.error(request, "internal", f"{type(exc).__name__}: {exc}")
        try:
            return connection.reply(request, results)
        except (TypeError, ValueError) as exc:  # a result the wire cannot carry is a bug; keep serving
            log.error("reply to request %s cannot be encoded:\n%s", request.seq, traceback.format_exc())
            return connection.error(request, "internal", f"the reply cannot be encoded: {exc}")

    def _run(
        self,
        connection: protocol.ServerProtocol,
        attachment: _Attachment,
        websocket: Any,
        request: protocol.Request,
        index: int,
    ) -> Any:
        op = request.ops[index]
        name = op["op"]
        if name == "hello":
            record = self._open(op, websocket)
            self._detach(attachment.record, websocket)
            attachment.record = record
            connection.attach(record.sequencer)
            self._persist(record, request.seq, index + 1)
            return {
                "device": str(self.host.device),
                "rng_sync": self.host.device.type == "cpu",
                "session": record.id,
                "persistent": self.store is not None,
            }
        if name == "resume":
            record = self._resume(op["session"], websocket)
            attachment.record = record
            connection.attach(record.sequencer)
            sequencer = record.sequencer
            return {
                "session": record.id,
                "last_seq": sequencer.last_seq,
                "have_reply": sequencer.last_reply is not None,
                "durable": sequencer.durable,
            }
        if name == "profile":
            return self.host.profile(op)
        if name == "ping":
            size = max(0, min(op["reply_bytes"], self.limits.max_message_bytes // 2))
            hardware = hardware_name(self.host.device)
            return {"payload": torch.zeros(size, dtype=torch.uint8), "hardware": hardware, "torch": torch.__version__}
        record = attachment.record
        if record is None:
            raise SessionError(f"op {name!r} before 'hello'")
        session = record.session
        if name == "forward":
            outputs, rng = session.forward(
                op["id"], op["values"], op["requires_grad"], op["training"], op["grad"], op["rng"]
            )
            return {"outputs": outputs, "rng": rng, "compute_s": session.compute_s}
        if name == "backward":
            return {"grads": session.backward(op["id"], op["grads"]), "compute_s": session.compute_s}
        if name == "release":
            return session.release(op["ids"])
        if name == "zero_grad":
            return session.zero_grad(op["optimizer"], op["set_to_none"])
        if name == "grad_norms":
            return session.grad_norms(op["optimizer"], float(op["norm_type"]))
        if name == "scale_grads":
            return session.scale_grads(op["optimizer"], op["coefficient"])
        if name == "clip_grad_value":
            return session.clip_grad_value(op["optimizer"], float(op["value"]))
        if name == "step":
            session.step(op["optimizer"], op["hparams"])
            record.steps += 1
            if record.steps % self.policy.state_every == 0:
                self._persist(record, request.seq, index + 1)
            return None
        if name == "state_dict":
            return session.state_dict()
        if name == "optimizer_state":
            return session.optimizer_state(op["optimizer"])
        if name == "load_optimizer_state":
            result = session.load_optimizer_state(op["optimizer"], op["state"])
            self._persist(record, request.seq, index + 1)
            return result
        if name == "close":
            self._close(record)
            attachment.record = None
            return None
        raise SessionError(f"op {name!r} is not served")

    # -- sessions --------------------------------------------------------------------------

    def _open(self, hello: dict[str, Any], websocket: Any) -> _Session:
        with self._lock:
            self._expire()
            if len(self.sessions) >= self.policy.max_sessions:
                raise SessionError(
                    f"the server holds {len(self.sessions)} sessions, its maximum: try again later, or start it "
                    "with a larger --max-sessions"
                )
        session = self.host.open(hello)
        description = {key: value for key, value in hello.items() if key not in ("op", "state")}
        record = _Session(secrets.token_hex(16), session, description, connection=websocket)
        with self._lock:
            self.sessions[record.id] = record
        log.info("session %s opened (%d held)", record.id, len(self.sessions))
        return record

    def _resume(self, session_id: str, websocket: Any) -> _Session:
        if not _SESSION_ID.match(session_id):
            raise SessionError(f"malformed session id {session_id[:40]!r}")
        with self._lock:
            record = self.sessions.get(session_id)
        if record is None:
            record = self._restore(session_id)
        with self._lock:
            previous, record.connection, record.detached_at = record.connection, websocket, None
        if previous is not None and previous is not websocket:
            log.info("session %s moved to a new connection", session_id)
            asyncio.run_coroutine_threadsafe(previous.close(1000, "session resumed on another connection"), self._loop)
        return record

    def _restore(self, session_id: str) -> _Session:
        saved = self.store.load(session_id) if self.store is not None else None
        if saved is None:
            raise SessionError(
                f"no session {session_id} here: it was closed, expired after {self.policy.session_ttl:g} s without "
                "its device, or the server restarted without --state-dir. Start the training again."
            )
        description = dict(saved["description"])
        session = self.host.open({**description, "state": saved["snapshot"]["state"]})
        session.restore(saved["snapshot"])
        seq, applied = saved["durable"]
        sequencer = protocol.Sequencer(last_seq=seq, applied_ops=applied, durable=seq)
        record = _Session(session_id, session, description, sequencer, steps=int(saved["steps"]))
        with self._lock:
            self.sessions[session_id] = record
        log.info("session %s restored from %s at request %d", session_id, self.store.directory, seq)
        return record

    def _persist(self, record: _Session, seq: int, applied_ops: int) -> None:
        if self.store is None:
            return
        self.store.save(record, seq, applied_ops)
        record.sequencer.durable = seq

    def _close(self, record: _Session) -> None:
        with self._lock:
            self.sessions.pop(record.id, None)
        if self.store is not None:
            self.store.delete(record.id)
        log.info("session %s closed (%d held)", record.id, len(self.sessions))
        _release_memory()

    def _detach(self, record: _Session | None, websocket: Any) -> None:
        if record is None:
            return
        with self._lock:
            if record.connection is websocket:
                record.connection, record.detached_at = None, time.monotonic()

    def _expire(self) -> None:
        """Free sessions whose device has been gone longer than the policy allows (lock held)."""
        now = time.monotonic()
        expired = [
            key
            for key, record in self.sessions.items()
            if record.detached_at is not None and now - record.detached_at > self.policy.session_ttl
        ]
        for key in expired:
            del self.sessions[key]
            log.info("session %s expired after %g s without its device", key, self.policy.session_ttl)
        if expired:
            _release_memory()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(0.05, self.policy.session_ttl / 4)))
            with self._lock:
                self._expire()

    async def start(
        self, host: str = "127.0.0.1", port: int = 8765, ssl_context: ssl.SSLContext | None = None
    ) -> Server:
        """Start listening; returns the websockets ``Server`` (its sockets tell the bound port)."""
        self._loop = asyncio.get_running_loop()
        self._reaper = self._loop.create_task(self._reap())
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
        """Stop the expiry task (call on the server's loop before it closes)."""
        reaper = getattr(self, "_reaper", None)
        if reaper is not None:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper

    def close(self) -> None:
        reaper = getattr(self, "_reaper", None)
        if reaper is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(reaper.cancel)
        self.executor.shutdown(wait=False, cancel_futures=True)


def _release_memory() -> None:
    """Give freed session memory back to the system (glibc keeps it otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def bound_url(server: Server, secure: bool = False) -> str:
    """``ws://host:port`` of a started server (the real port when 0 was asked for)."""
    sockname = next(iter(server.sockets)).getsockname()
    host = sockname[0]
    if ":" in host:
        host = f"[{host}]"
    return f"{'wss' if secure else 'ws'}://{host}:{sockname[1]}"


class EmbeddedServer:
    """A :class:`SplitServer` on a background thread of this process, on 127.0.0.1.

    The same server code as ``lightning-split serve``: a single machine needs no second
    command, and tests exercise the real transport.
    """

    def __init__(
        self, host: ModelHost, token: str | None = None, port: int = 0, policy: ServerPolicy | None = None
    ) -> None:
        self.server = SplitServer(host, token=token, policy=policy)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Future[None] | None = None
        self.url = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(port,), name="split-embedded-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"embedded server failed to start: {self._error}") from self._error

    def _main(self, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(port))
        except BaseException as exc:  # surfaced to the constructor
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self, port: int) -> None:
        started = await self.server.start("127.0.0.1", port)
        self.url = bound_url(started)
        self._stopped = asyncio.get_running_loop().create_future()
        self._ready.set()
        await self._stopped
        started.close()
        await started.wait_closed()
        await self.server.stop_reaper()

    def close(self) -> None:
        """Stop accepting, close connections, join the thread."""
        if self._stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._stopped.done() or self._stopped.set_result(None))
        self._thread.join(timeout=10)
        self.server.close()

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
