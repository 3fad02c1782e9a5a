"""``lightning-split serve``: the websocket server that runs the suffixes.

Three small pieces, one job each:

- :class:`ModelHost` turns a ``hello`` op into a :class:`~lightning_split.session.ServerSession`:
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
import hmac
import http
import logging
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from lightning_split import protocol, wire
from lightning_split.programs import SplitError, SplitSpec, graph_summary, make_spec, materialize_skeleton
from lightning_split.session import OptimizerSpec, ServerSession, SessionError
from lightning_split.trace import TracedModel, TraceError, trace_module

log = logging.getLogger("lightning_split.server")

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
        timings are of this server's device, on zero tensors of the device's shapes.
        """
        from lightning_split.measure import measure_node_costs

        with torch.random.fork_rng(devices=[]):
            traced, example = self._trace(request)
            started = time.perf_counter()
            node_s = measure_node_costs(
                traced,
                tuple(example["args"]),
                dict(example["kwargs"]),
                device=self.device,
                warmup=max(0, min(int(request["warmup"]), 20)),
                repeats=max(1, min(int(request["repeats"]), 50)),
            )
        return {
            "node_s": node_s,
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
        return ServerSession(graph, spec, state, optimizers, device=self.device)


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
class _ConnectionState:
    session: ServerSession | None = None


class SplitServer:
    """Serves split-learning sessions over websockets.

    Args:
        host: builds the sessions.
        token: bearer token required at the handshake (``None``: no authentication).
        limits: wire limits applied to every message.
    """

    def __init__(self, host: ModelHost, token: str | None = None, limits: wire.Limits | None = None) -> None:
        self.host = host
        self.token = token
        self.limits = limits or wire.Limits()
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
        """Serve one connection: one session, requests answered in order."""
        connection = protocol.ServerConnection(self.limits)
        state = _ConnectionState()
        loop = asyncio.get_running_loop()
        try:
            async for message in websocket:
                reply = await loop.run_in_executor(self.executor, self._answer, connection, state, message)
                await websocket.send(reply)
        except ConnectionClosed:
            pass
        finally:
            state.session = None

    def _answer(self, connection: protocol.ServerConnection, state: _ConnectionState, message: Any) -> bytes:
        try:
            request = connection.receive(message)
        except protocol.ProtocolError as exc:
            return connection.error(None, "protocol", str(exc))
        if isinstance(request, bytes):
            return request
        try:
            results = [self._run(state, op) for op in request.ops]
        except (SessionError, SplitError, protocol.ProtocolError) as exc:
            return connection.error(request, type(exc).__name__, str(exc))
        except Exception as exc:  # a bug or a bad tensor: end this request, keep serving
            log.error("request %s failed:\n%s", request.seq, traceback.format_exc())
            return connection.error(request, "internal", f"{type(exc).__name__}: {exc}")
        return connection.reply(request, results)

    def _run(self, state: _ConnectionState, op: dict[str, Any]) -> Any:
        name = op["op"]
        if name == "hello":
            state.session = self.host.open(op)
            return {"device": str(self.host.device), "rng_sync": self.host.device.type == "cpu"}
        if name == "profile":
            return self.host.profile(op)
        if name == "ping":
            size = max(0, min(op["reply_bytes"], self.limits.max_message_bytes // 2))
            return {"payload": torch.zeros(size, dtype=torch.uint8)}
        session = state.session
        if session is None:
            raise SessionError(f"op {name!r} before 'hello'")
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
            return session.step(op["optimizer"], op["hparams"])
        if name == "state_dict":
            return session.state_dict()
        if name == "optimizer_state":
            return session.optimizer_state(op["optimizer"])
        if name == "load_optimizer_state":
            return session.load_optimizer_state(op["optimizer"], op["state"])
        if name == "close":
            state.session = None
            return None
        raise SessionError(f"op {name!r} is not served")

    async def start(
        self, host: str = "127.0.0.1", port: int = 8765, ssl_context: ssl.SSLContext | None = None
    ) -> Server:
        """Start listening; returns the websockets ``Server`` (its sockets tell the bound port)."""
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

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def hardware_name(device: torch.device) -> str:
    """A short name of the hardware behind ``device`` (GPU model, or the CPU and its thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


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

    def __init__(self, host: ModelHost, token: str | None = None, port: int = 0) -> None:
        self.server = SplitServer(host, token=token)
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
