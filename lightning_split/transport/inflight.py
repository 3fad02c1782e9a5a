"""Requests in flight: send ahead without waiting, receive beside the training thread.

:meth:`RemoteServer.call <lightning_split.transport.client.RemoteServer.call>` is one request
and its reply, one after the other. A pipelined step wants more: the device sends the next
micro-batch's request while the previous ones are on the wire or on the server, and goes on
computing. :class:`InFlight` does that for one connection:

- :meth:`InFlight.submit` numbers and encodes a request (in the caller's thread, so requests
  keep the order they were submitted in) and hands it to a *sender* thread, which holds it
  back for the emulated uplink (if the connection has a :class:`LinkEmulator`) and writes it to
  the socket; it returns a :class:`Reply` at once;
- a *receiver* thread reads the replies as they come (the server answers a session's requests
  in order), stamps each with its emulated arrival time, and hands it to its :class:`Reply`;
- :meth:`Reply.result` waits for the reply and its arrival, then decodes it.

websockets' synchronous client allows one thread sending while another receives. A plain
``call`` on the same connection first waits until nothing is in flight (:meth:`InFlight.drain`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any

from websockets.exceptions import ConnectionClosed

from lightning_split.transport import protocol
from lightning_split.transport.errors import ConnectionFailed

__all__ = ["InFlight", "Reply"]


class Reply:
    """The pending reply to one submitted request."""

    def __init__(self, channel: InFlight, sent: protocol.Sent, emulator: Any) -> None:
        self.channel = channel
        self.sent = sent
        self.emulator = emulator
        self._done = threading.Event()
        self._reply: bytes | None = None
        self._arrival = 0.0
        self._error: BaseException | None = None

    def deliver(self, reply: bytes, arrival: float) -> None:
        self._reply, self._arrival = reply, arrival
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()
        self.channel._failed.append(self)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> list[Any]:
        """The results of the request's ops (not of the deferred ops that rode with it).

        Raises:
            RemoteError: the server refused or failed the request.
            ConnectionFailed: the connection was lost and the request could not be recovered.
        """
        self._done.wait()
        if self._error is not None:
            self.channel.recover(self)
        assert self._reply is not None
        if self.emulator is not None:
            self.emulator.wait_until(self._arrival)
        remote = self.channel.remote
        remote.traffic.bytes_down += len(self._reply)
        reply, self._reply = self._reply, None
        return remote.protocol.receive(reply, self.sent)


class InFlight:
    """Pipelined requests on one :class:`~lightning_split.transport.client.RemoteServer` connection."""

    def __init__(self, remote: Any) -> None:  # a RemoteServer (which imports this module)
        self.remote = remote
        self._lock = threading.Lock()
        self._waiting: deque[Reply] = deque()  # sent or queued, reply not yet received, in order
        self._outbox: queue.Queue[tuple[Reply, float] | None] = queue.Queue()
        self._unsent = 0
        self._idle = threading.Condition(self._lock)
        self._sender: threading.Thread | None = None
        self._receiver: threading.Thread | None = None
        self._busy_since = 0.0
        self._failed: list[Reply] = []  # failed by a lost connection, to recover in order

    def submit(self, ops: list[dict[str, Any]]) -> Reply:
        """Send a request without waiting for its reply; its deferred ops ride with it."""
        remote = self.remote
        with remote._lock:
            if remote._socket is None:
                remote.connect()
            sent = remote.protocol.request(ops)
            emulator = remote.emulator
            reply = Reply(self, sent, emulator)
            ready = emulator.uplink_arrival(len(sent.data)) if emulator is not None else 0.0
            remote.traffic.requests += 1
            remote.traffic.bytes_up += len(sent.data)
        with self._lock:
            if not self._waiting:
                self._busy_since = time.perf_counter()
            self._waiting.append(reply)
            self._unsent += 1
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, name="split-sender", daemon=True)
                self._sender.start()
            if self._receiver is None:
                self._receiver = threading.Thread(target=self._receive_loop, name="split-receiver", daemon=True)
                self._receiver.start()
        self._outbox.put((reply, ready))
        return reply

    def drain(self) -> None:
        """Wait until every submitted request was sent and its reply received (not necessarily read)."""
        with self._idle:
            self._idle.wait_for(lambda: not self._waiting and self._unsent == 0 and self._receiver is None)

    def close(self) -> None:
        """Stop the sender thread (after what it holds was sent)."""
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join(timeout=10)
            self._sender = None

    # -- threads ---------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            reply, ready = item
            try:
                if reply.emulator is not None:
                    reply.emulator.wait_until(ready)
                socket = self.remote._socket
                if socket is None:
                    raise ConnectionError("the connection was closed")
                socket.send(reply.sent.data.message)
            except (ConnectionClosed, OSError) as exc:
                self._fail_all(exc)
            finally:
                with self._idle:
                    self._unsent -= 1
                    self._idle.notify_all()

    def _receive_loop(self) -> None:
        remote = self.remote
        while True:
            with self._idle:
                if not self._waiting:
                    self._receiver = None
                    self._idle.notify_all()
                    return
                reply = self._waiting[0]
            if reply.done:  # failed while queued
                self._pop(reply)
                continue
            socket = remote._socket
            try:
                if socket is None:
                    raise ConnectionError("the connection was closed")
                data = socket.recv(timeout=remote.timeout)
            except TimeoutError:
                self._fail_all(
                    ConnectionFailed(f"the server at {remote.url} did not answer within {remote.timeout:g} s")
                )
                continue
            except (ConnectionClosed, OSError) as exc:
                self._fail_all(exc)
                continue
            received = time.perf_counter()
            if isinstance(data, str):
                self._fail_all(protocol.ProtocolError("text reply received; the protocol uses binary messages only"))
                continue
            arrival = reply.emulator.downlink_arrival(len(data), received) if reply.emulator is not None else received
            self._pop(reply, arrival)
            reply.deliver(data, arrival)

    def _pop(self, reply: Reply, arrival: float | None = None) -> None:
        with self._idle:
            if self._waiting and self._waiting[0] is reply:
                self._waiting.popleft()
            if not self._waiting and arrival is not None:
                self.remote.traffic.round_trip_s += max(arrival, time.perf_counter()) - self._busy_since
            self._idle.notify_all()

    def _fail_all(self, error: BaseException) -> None:
        with self._idle:
            failed = list(self._waiting)
        for reply in failed:
            if not reply.done:
                reply.fail(error)

    # -- recovery --------------------------------------------------------------------------

    def recover(self, first: Reply) -> None:
        """After a lost connection: reconnect, resume, and get the replies of the failed requests in order.

        The server keeps the reply of its last request only, so this recovers when the server
        ran none of the failed requests, or only the first; otherwise
        :class:`~lightning_split.transport.client.ConnectionFailed` says so.
        """
        self.drain()
        remote = self.remote
        with remote._lock:
            if first._error is None:  # recovered with an earlier request
                return
            with self._idle:
                failed, self._failed = sorted(self._failed, key=lambda r: r.sent.seq), []
            error = first._error
            if isinstance(error, (protocol.ProtocolError, ConnectionFailed)):
                raise error
            try:
                head, *rest = [reply for reply in failed if reply.sent.seq >= first.sent.seq] or [first]
                head.deliver(remote._recover(head.sent, error), time.perf_counter())
                for reply in rest:
                    reply.deliver(remote._exchange(reply.sent.data), time.perf_counter())
            except (ConnectionClosed, OSError, protocol.RemoteError) as exc:
                for reply in failed:
                    reply._error = exc if reply._reply is None else None
                raise ConnectionFailed(
                    f"lost the connection to {remote.url} with {len(failed)} micro-batch requests in flight and could "
                    f"not recover them ({exc}); train with micro_batches=1 on a link this unreliable"
                ) from exc
            for reply in failed:
                reply._error = None
