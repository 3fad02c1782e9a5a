"""The device's connection to a lightning-split server (synchronous websockets).

Training is sequential (the device waits for the server's outputs before it computes the
loss), so the client is a plain blocking connection driven from the training thread:
:meth:`RemoteServer.call` sends the deferred ops plus the ones given and returns their
results. It counts bytes and wire time for the logs.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from lightning_split import protocol, wire
from lightning_split.profile import Link

TOKEN_ENV = "LIGHTNING_SPLIT_TOKEN"


class ConnectionFailed(ConnectionError):
    """The server could not be reached or refused the handshake; says which and what to do."""


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


class LinkEmulator:
    """Makes a fast connection behave like a slower link, for experiments on one machine.

    Before a request goes out it waits half the round-trip time plus the request's bytes at
    the uplink rate; after a reply arrives it waits the other half plus the reply's bytes at
    the downlink rate. The server computes meanwhile only on what it has received, so a step
    costs what the cost model says a link of that speed costs (on top of the real link).
    """

    def __init__(self, link: Link, sleep: Any = time.sleep) -> None:
        link.validate()
        self.link = link
        self._sleep = sleep

    def before_send(self, nbytes: int) -> None:
        self._sleep(self.link.rtt_s / 2 + nbytes / self.link.uplink_bytes_per_s)

    def after_receive(self, nbytes: int) -> None:
        self._sleep(self.link.rtt_s / 2 + nbytes / self.link.downlink_bytes_per_s)


class RemoteServer:
    """One connection to a server, speaking :mod:`lightning_split.protocol`.

    Args:
        url: ``ws://host:port`` or ``wss://host:port``.
        token: bearer token (default: the ``LIGHTNING_SPLIT_TOKEN`` environment variable).
        ca_file: CA bundle to verify a ``wss://`` server with (default: the system's).
        timeout: seconds to wait for the handshake and for each reply.
        limits: wire limits for replies.
        link_limit: emulate a slower link (see :class:`LinkEmulator`); ``None``: the real link as it is.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        ca_file: str | None = None,
        timeout: float = 300.0,
        limits: wire.Limits | None = None,
        link_limit: Link | str | None = None,
    ) -> None:
        self.url = url
        if isinstance(link_limit, str):
            link_limit = Link.parse(link_limit)
        self.emulator = LinkEmulator(link_limit) if link_limit is not None else None
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.ca_file = ca_file
        self.timeout = timeout
        self.protocol = protocol.ClientConnection(limits or wire.Limits())
        self.traffic = Traffic()
        self._lock = threading.Lock()
        self._socket: ClientConnection | None = None

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
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = (
                f"set the token with SplitStrategy(token=...) or the {TOKEN_ENV} environment variable"
                if status == 401
                else "check the URL"
            )
            raise ConnectionFailed(f"server {self.url} refused the handshake with HTTP {status}: {hint}") from exc
        except (OSError, TimeoutError) as exc:
            raise ConnectionFailed(
                f"cannot reach the lightning-split server at {self.url} ({exc}); is `lightning-split serve` running "
                "there, and is the port open?"
            ) from exc

    def defer(self, op: dict[str, Any]) -> None:
        """Queue an op that needs no reply (it rides with the next call)."""
        with self._lock:
            self.protocol.defer(op)

    def call(self, ops: Sequence[dict[str, Any]]) -> list[Any]:
        """Send the deferred ops and ``ops``; wait for and return the results of ``ops``."""
        with self._lock:
            if self._socket is None:
                self.connect()
            assert self._socket is not None
            seq, data, skip = self.protocol.request(list(ops))
            started = time.perf_counter()
            try:
                if self.emulator is not None:
                    self.emulator.before_send(len(data))
                self._socket.send(data)
                reply = self._socket.recv(timeout=self.timeout)
                if self.emulator is not None:
                    self.emulator.after_receive(len(reply))
            except TimeoutError as exc:
                raise ConnectionFailed(
                    f"the server at {self.url} did not answer within {self.timeout:.0f} s; it may be overloaded "
                    "or stuck: check its log, or raise SplitStrategy(timeout=...)"
                ) from exc
            except ConnectionClosed as exc:
                raise ConnectionFailed(f"the connection to {self.url} closed: {exc}") from exc
            elapsed = time.perf_counter() - started
            self.traffic.requests += 1
            self.traffic.bytes_up += len(data)
            self.traffic.bytes_down += len(reply)
            self.traffic.round_trip_s += elapsed
            return self.protocol.receive(reply, seq, skip)

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
