"""The federations a server hosts: many devices, one model (``Federation`` on the device side).

A federation is a named group of ``clients`` sessions of the same model and placement
(:mod:`lightning_split.serve.fedgroups`). In ``sequential`` mode the clients take turns; the
server part passes from one client's session to the next inside the server, and the device
part passes through it sealed (the server forwards bytes it cannot read). In ``splitfed``
mode all train at once, and every ``round_steps`` the server replaces both parts by their
sample-weighted average. The per-client server parts sit behind
:class:`~lightning_split.serve.suffixes.SuffixPool`.

A client waiting for its turn or for a round's average sends ``fed_wait``; the app holds
that request (without blocking the compute thread) until :meth:`FederationTable.ready` says
it can run, or a few seconds have passed, then runs it. A client that does not come back
within the federation's ``timeout`` is skipped (sequential) or left out of the round's
average (splitfed), with a log line; it rejoins at its next ``fed_wait``.

**Restarts** (``serve --state-dir``). Every federation op (``fed_join``, ``fed_wait``,
``fed_submit``) is a durable point of its session, and the federation is written
(:class:`~lightning_split.serve.fedstate.FederationStore`) *before* that session: the app
calls :meth:`FederationTable.handle`, which saves the group when its state changed, and then
persists the session at the op. A server killed anywhere leaves, for every client ``c``, the
federation's file at least as new as ``c``'s session file, so after the restart the device
replays from its session's durable point and every federation op it replays is one of:

- not yet in the federation's file: it runs as the first time (it reads and writes only the
  federation and the replaying client's own session, both as they were when it first ran);
- already in it: ``fed_join`` and ``fed_wait`` do again exactly what they did (the same
  membership; the same server part installed: the one the turn or round started from, which
  the file keeps), and a ``fed_submit`` whose turn or round is over is ignored, with a log line.

Changes made while checking whether a held ``fed_wait`` may run (a turn skipped, a round
closed) are saved when the next op of that group runs, before any client sees them; lost
in a crash, they are made again. A restored federation waits ``timeout`` seconds for each
client to come back, from the restart on. A client's session that was restored links back
to its federation at ``resume`` (:meth:`FederationTable.attach`).

The server's log shows each federation (:meth:`FederationTable.status_line`) whenever its
state changes and every ``serve --status-every`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning_split.serve.fedgroups import MODES, Group, identity_of, restore_group
from lightning_split.serve.fedstate import FederationStore
from lightning_split.serve.sessions import SessionRecord
from lightning_split.transport import federation as fed
from lightning_split.transport.protocol import SessionError

log = logging.getLogger("lightning_split.serve.app")

#: the longest the app holds a ``fed_wait`` before answering ``ready=False`` (the device asks again).
HOLD_S = 10.0


@dataclass
class Waiting:
    """A ``fed_wait`` the app holds: it runs again when the federations change (or every ``poll_s``)."""

    event: asyncio.Event | None
    poll_s: float

    async def wait(self) -> None:
        if self.event is None:
            await asyncio.sleep(self.poll_s)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.event.wait(), self.poll_s)


class FederationTable:
    """The federations of one server, by name; every method runs on the compute thread.

    Args:
        clock: seconds, monotonic (the tests' clock is the real one: timeouts are the federations').
        poll_s: how often a held ``fed_wait`` is looked at again without a change (timeouts).
        store: where federations are persisted (``None``: in memory only); the ones saved
            there are restored now.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, poll_s: float = 0.5, store: FederationStore | None = None
    ) -> None:
        self.groups: dict[str, Group] = {}
        self.by_session: dict[str, tuple[Group, int]] = {}
        self.clock, self.poll_s, self.store = clock, poll_s, store
        self.loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._marks: dict[str, tuple] = {}  # what each group was when last saved
        self._shown: dict[str, str] = {}  # the status line last logged for each group
        if store is not None:
            for name, fields in store.load_all():
                self._adopt(restore_group(name, fields, clock))

    def _adopt(self, group: Group) -> None:
        self.groups[group.name] = group
        self._marks[group.name] = group.mark()
        self._shown[group.name] = self.status_line(group)
        for client, member in group.members.items():
            if member.session is not None and not member.done:
                self.by_session[member.session] = (group, client)
        log.info("federation %s restored at %s", group.name, group.status())
        log.info("%s", self._shown[group.name])

    # -- waking held requests -------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake held requests on ``loop`` when a federation changes."""
        self.loop = loop
        loop.call_soon_threadsafe(self._renew)

    def _renew(self) -> None:
        if self._event is not None:
            self._event.set()
        self._event = asyncio.Event()

    def _changed(self, group: Group) -> None:
        """After an op of ``group``: save it if it changed, log its status line if that changed; wake held requests."""
        mark = group.mark()
        if mark != self._marks.get(group.name):
            self._marks[group.name] = mark
            if self.store is not None:
                if group.finished():
                    self.store.delete(group.name)
                else:
                    self.store.save(group.name, group.state())
        line = self.status_line(group)
        if line != self._shown.get(group.name):
            self._shown[group.name] = line
            log.info("%s", line)
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._renew)

    def waiting(self) -> Waiting:
        return Waiting(self._event, self.poll_s)

    # -- status ---------------------------------------------------------------------------

    def status_line(self, group: Group) -> str:
        """One line for the server's log: mode, who joined, who finished, turn or round, whom it waits for."""
        finished = [client for client, member in group.members.items() if member.done]
        done = f", finished {finished}" if finished else ""
        if group.finished():
            return f"federation {group.name} status: {group.mode}, all {group.clients} clients finished"
        return (
            f"federation {group.name} status: {group.mode}, joined {group.joined()} of {group.clients}{done}; "
            f"{group.status()}"
        )

    def log_status(self) -> None:
        """Log every federation still training (``serve --status-every``)."""
        for group in list(self.groups.values()):
            if not group.finished():
                log.info("%s", self.status_line(group))

    # -- the ops ----------------------------------------------------------------------------

    def member(self, record: SessionRecord | None, what: str) -> tuple[Group, int]:
        found = self.by_session.get(record.id) if record is not None else None
        if found is None:
            raise SessionError(f"{what} before 'fed_join': join a federation first")
        return found

    def handle(self, op: Any, record: SessionRecord | None) -> fed.FedJoinReply | fed.FedWaitReply | None:
        """Run one federation op of ``record``'s session; the federation is saved before this returns."""
        if isinstance(op, fed.FedJoin):
            if record is None:
                raise SessionError("op 'fed_join' before 'hello'")
            return self.join(op, record)
        if isinstance(op, fed.FedWait):
            return self.wait(op, record)
        self.submit(op, record)
        return None

    def join(self, op: fed.FedJoin, record: SessionRecord) -> fed.FedJoinReply:
        """Add the session to federation ``op.group`` (created on its first join)."""
        identity = identity_of(record)
        group = self.groups.get(op.group)
        if group is not None and group.finished():
            group = None  # every client of the last federation of that name finished: a new one starts
        if group is None:
            group = MODES[op.mode](op, identity, self.clock)
            self.groups[op.group] = group
            self._marks.pop(op.group, None)
            self._shown.pop(op.group, None)
            log.info(
                "federation %s (%s, %d clients, %d steps a round) created",
                op.group,
                op.mode,
                op.clients,
                op.round_steps,
            )
        problem = group.refusal(op, identity, record.id)
        if problem is not None:
            raise SessionError(f"{problem}: every client of a federation trains the same model, cut and group size")
        previous = group.members[op.client].session
        if previous is not None and previous != record.id:
            self.by_session.pop(previous, None)
        group.join(op.client, record)
        self.by_session[record.id] = (group, op.client)
        log.info("federation %s: client %d joined (%d of %d)", op.group, op.client, len(group.joined()), group.clients)
        self._changed(group)
        return fed.FedJoinReply(joined=group.joined(), round=getattr(group, "round", 0))

    def attach(self, record: SessionRecord) -> None:
        """A session resumed (perhaps restored from its file): its federation speaks through it again."""
        found = self.by_session.get(record.id)
        if found is not None:
            group, client = found
            if group.members[client].record is not record:
                group.join(client, record)
                log.info("federation %s: client %d is back", group.name, client)

    def ready(self, op: Any, record: SessionRecord | None) -> bool:
        """Whether a ``fed_wait`` can run now (other ops always can)."""
        if not isinstance(op, fed.FedWait) or not op.hold or record is None or record.id not in self.by_session:
            return True
        group, client = self.by_session[record.id]
        return group.ready(client, op)

    def wait(self, op: fed.FedWait, record: SessionRecord | None) -> fed.FedWaitReply:
        group, client = self.member(record, "fed_wait")
        reply = group.wait(client, op)
        if not reply.ready:
            log.info("federation %s: client %d waits: %s", group.name, client, group.status())
        self._changed(group)
        return reply

    def submit(self, op: fed.FedSubmit, record: SessionRecord | None) -> None:
        group, client = self.member(record, "fed_submit")
        group.submit(client, op)
        self._changed(group)

    def leave(self, record: SessionRecord) -> None:
        """The session closed: its client finished."""
        found = self.by_session.pop(record.id, None)
        if found is None:
            return
        group, client = found
        group.leave(client)
        log.info("federation %s: client %d finished", group.name, client)
        self._changed(group)
