"""A TCP proxy on 127.0.0.1 that breaks its connections on command (real sockets, real faults)."""

from __future__ import annotations

import contextlib
import socket
import threading


class FaultProxy:
    """Relays TCP between clients and ``127.0.0.1:target_port``; can cut a connection mid-exchange.

    ``drop_next_request()``: the next bytes a client sends are swallowed and the connection is
    cut (the server never sees the request). ``drop_next_reply()``: the next bytes the server
    sends are swallowed and the connection is cut (the server did the work, the client never
    hears of it). Each arming cuts once; ``cuts`` counts the cuts made. ``relayed["up"]`` and
    ``relayed["down"]`` count the bytes relayed to the server and back (what its sockets
    received and sent, websocket framing included).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self.relayed = {"up": 0, "down": 0}
        self._drop_request = threading.Event()
        self._drop_reply = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def drop_next_request(self) -> None:
        self._drop_request.set()

    def drop_next_reply(self) -> None:
        self._drop_reply.set()

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._open += [client, server]
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, self._drop_request, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self._drop_reply, pair), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, drop: threading.Event, pair: tuple) -> None:
        while True:
            try:
                data = source.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            if drop.is_set():
                drop.clear()
                self.cuts += 1
                break
            try:
                sink.sendall(data)
            except OSError:
                break
            with self._lock:
                self.relayed["up" if drop is self._drop_request else "down"] += len(data)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
