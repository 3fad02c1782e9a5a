"""Sessions on disk (``serve --state-dir``): one file per session, written atomically, in the wire format.

A file holds what a restarted server needs to continue a session: its description (the
``hello`` without the state tensors), a snapshot (suffix state, gradients, optimizer state),
the optimizer steps taken, and the *durable point*: the request and the number of its ops the
snapshot includes. Nothing in it is ever unpickled or executed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_split.transport import wire
from lightning_split.transport.messages import SESSION_ID
from lightning_split.transport.protocol import SessionError


@dataclass(frozen=True)
class Point:
    """Where a snapshot stands in a session's requests: request ``seq``, its first ``ops`` ops applied."""

    seq: int
    ops: int


@dataclass(frozen=True)
class Saved:
    """One persisted session."""

    description: dict[str, Any]  # the hello's fields without "op" and "state"
    snapshot: dict[str, Any]  # ServerSession.snapshot()
    durable: Point
    steps: int


class StateStore:
    """Persists sessions in a directory, one ``<session id>.lsw`` file each."""

    def __init__(self, directory: str | Path, limits: wire.Limits | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.limits = limits or wire.Limits(max_message_bytes=2**40)

    def path(self, session_id: str) -> Path:
        """The session's file; the id is checked here because it becomes a file name."""
        if not SESSION_ID.match(session_id):
            raise SessionError(f"malformed session id {session_id[:40]!r}")
        return self.directory / f"{session_id}.lsw"

    def save(self, session_id: str, saved: Saved) -> None:
        """Write the session's file atomically (a crash leaves the old file or the new one, never half)."""
        data = wire.encode(
            {
                "description": saved.description,
                "snapshot": saved.snapshot,
                "durable": [saved.durable.seq, saved.durable.ops],
                "steps": saved.steps,
            }
        )
        write_atomically(self.path(session_id), data)

    def load(self, session_id: str) -> Saved | None:
        """The saved session, or ``None`` when there is none.

        Raises:
            SessionError: the file cannot be read or is not a saved session.
        """
        path = self.path(session_id)
        if not path.exists():
            return None
        try:
            content = wire.decode(path.read_bytes(), self.limits)
        except (OSError, wire.WireError) as exc:
            raise SessionError(f"the saved session {session_id} cannot be read: {exc}") from exc
        description, snapshot = content.get("description"), content.get("snapshot")
        durable, steps = content.get("durable"), content.get("steps")
        if not (
            isinstance(description, dict)
            and isinstance(snapshot, dict)
            and isinstance(durable, list)
            and len(durable) == 2
            and all(_is_count(value) for value in (*durable, steps))
        ):
            raise SessionError(f"the saved session {session_id} is not one this server wrote")
        return Saved(description, snapshot, Point(*durable), steps)

    def delete(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(session_id).unlink()


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that a crash leaves the old file or the new one, never half of either."""
    temporary = target.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
