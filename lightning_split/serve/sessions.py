"""The sessions a server holds: opened, moved between connections, restored, persisted, expired.

A session outlives its connections: when a device's connection drops, its
:class:`SessionRecord` waits ``session_ttl`` seconds for a ``resume``; with a
:class:`~lightning_split.serve.store.StateStore`, a session a restarted server never saw is
restored from its file. Methods may be called from any thread (one lock guards the table).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lightning_split.serve.host import ModelHost
from lightning_split.serve.session import ServerSession
from lightning_split.serve.store import Point, Saved, StateStore
from lightning_split.transport import messages, protocol
from lightning_split.transport.protocol import SessionError

log = logging.getLogger("lightning_split.serve.app")


@dataclass
class SessionRecord:
    """A server session and what outlives its connections: id, description, request order."""

    id: str
    session: ServerSession
    description: dict[str, Any]  # the hello's fields without the state tensors, for a restore
    sequencer: protocol.Sequencer = field(default_factory=protocol.Sequencer)
    steps: int = 0
    connection: Any = None
    detached_at: float | None = None


class SessionTable:
    """The sessions of one server, by id.

    Args:
        host: builds sessions from ``hello`` ops.
        store: where sessions are persisted (``None``: in memory only).
        max_sessions: sessions held at once (connected or waiting for their device).
        session_ttl: seconds a session without a connection is kept in memory.
    """

    def __init__(self, host: ModelHost, store: StateStore | None, max_sessions: int, session_ttl: float) -> None:
        self.host, self.store = host, store
        self.max_sessions, self.session_ttl = max_sessions, session_ttl
        self.held: dict[str, SessionRecord] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.held)

    def open(self, hello: messages.Hello, connection: Any) -> SessionRecord:
        """A new session for ``hello``, attached to ``connection``."""
        with self._lock:
            self._expire()
            if len(self.held) >= self.max_sessions:
                raise SessionError(
                    f"the server holds {len(self.held)} sessions, its maximum: try again later, or start it "
                    "with a larger --max-sessions"
                )
        session = self.host.open(hello)
        description = {key: value for key, value in hello.to_wire().items() if key not in ("op", "state")}
        record = SessionRecord(secrets.token_hex(16), session, description, connection=connection)
        with self._lock:
            self.held[record.id] = record
        log.info("session %s opened (%d held)", record.id, len(self.held))
        return record

    def reattach(self, session_id: str, connection: Any) -> tuple[SessionRecord, Any]:
        """Attach session ``session_id`` (restored if need be) to ``connection``; also return its previous one."""
        with self._lock:
            record = self.held.get(session_id)
        if record is None:
            record = self._restore(session_id)
        with self._lock:
            previous, record.connection, record.detached_at = record.connection, connection, None
        return record, previous if previous is not connection else None

    def _restore(self, session_id: str) -> SessionRecord:
        saved = self.store.load(session_id) if self.store is not None else None
        if saved is None:
            raise SessionError(
                f"no session {session_id} here: it was closed, expired after {self.session_ttl:g} s without "
                "its device, or the server restarted without --state-dir. Start the training again."
            )
        hello = messages.Hello.from_wire(
            {**saved.description, "op": "hello", "state": saved.snapshot.get("state")},
            f"the saved session {session_id}",
        )
        session = self.host.open(hello)
        session.restore(saved.snapshot)
        seq = saved.durable.seq
        sequencer = protocol.Sequencer(last_seq=seq, applied_ops=saved.durable.ops, durable=seq)
        record = SessionRecord(session_id, session, saved.description, sequencer, steps=saved.steps)
        with self._lock:
            self.held[session_id] = record
        log.info("session %s restored from %s at request %d", session_id, self.store.directory, seq)
        return record

    def persist(self, record: SessionRecord, point: Point) -> None:
        """Save the session as it is after ``point`` (nothing without a store)."""
        if self.store is None:
            return
        self.store.save(record.id, Saved(record.description, record.session.snapshot(), point, record.steps))
        record.sequencer.durable = point.seq

    def close(self, record: SessionRecord) -> None:
        """End a session: forget it, delete its file, give its memory back."""
        with self._lock:
            self.held.pop(record.id, None)
        if self.store is not None:
            self.store.delete(record.id)
        log.info("session %s closed (%d held)", record.id, len(self.held))
        _release_memory()

    def detach(self, record: SessionRecord | None, connection: Any) -> None:
        """``connection`` dropped: its session (if it still speaks for one) starts waiting for a resume."""
        if record is None:
            return
        with self._lock:
            if record.connection is connection:
                record.connection, record.detached_at = None, time.monotonic()

    def expire(self) -> None:
        """Free sessions whose device has been gone longer than ``session_ttl``."""
        with self._lock:
            self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        expired = [
            key
            for key, record in self.held.items()
            if record.detached_at is not None and now - record.detached_at > self.session_ttl
        ]
        for key in expired:
            del self.held[key]
            log.info("session %s expired after %g s without its device", key, self.session_ttl)
        if expired:
            _release_memory()


def _release_memory() -> None:
    """Give freed session memory back to the system (glibc keeps it otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
