"""The federations a server hosts: many devices, one model (``Federation`` on the device side).

A federation is a named group of ``clients`` sessions of the same model and placement. In
``sequential`` mode (:class:`SequentialGroup`) the clients take turns; the server part passes
from one client's session to the next inside the server, and the device part passes
through it sealed (the server forwards bytes it cannot read). In ``splitfed`` mode
(:class:`SplitFedGroup`) all train at once, and every ``round_steps`` the server replaces
both parts by their sample-weighted average. The per-client server parts sit behind
:class:`~lightning_split.serve.suffixes.SuffixPool`.

A client waiting for its turn or for a round's average sends ``fed_wait``; the app holds
that request (without blocking the compute thread) until :meth:`FederationTable.ready` says
it can run, or a few seconds have passed, then runs it. A client that does not come back
within the federation's ``timeout`` is skipped (sequential) or left out of the round's
average (splitfed), with a log line; it rejoins at its next ``fed_wait``.
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

import torch

from lightning_split.serve.sessions import SessionRecord
from lightning_split.serve.suffixes import LocalSuffixes, SuffixState, weighted_average
from lightning_split.transport import federation as fed
from lightning_split.transport.protocol import SessionError

log = logging.getLogger("lightning_split.serve.app")

_EMPTY = torch.zeros(0, dtype=torch.uint8)
#: the longest the app holds a ``fed_wait`` before answering ``ready=False`` (the device asks again).
HOLD_S = 10.0


@dataclass
class Member:
    """One client of a federation: its session (while it has one) and whether it finished."""

    client: int
    record: SessionRecord | None = None
    done: bool = False

    def gone_for(self, now: float) -> float:
        """Seconds this client has had no connection (0 while it has one)."""
        if self.record is None or self.done:
            return float("inf")
        detached = self.record.detached_at
        return 0.0 if self.record.connection is not None or detached is None else now - detached


class Group:
    """What both modes share: membership, the check that a joining client trains the same model."""

    mode = ""

    def __init__(self, join: fed.FedJoin, identity: dict[str, Any], clock: Callable[[], float]) -> None:
        self.name, self.clients = join.group, join.clients
        self.round_steps, self.timeout = join.round_steps, join.timeout
        self.identity = identity
        self.clock = clock
        self.members = {client: Member(client) for client in range(self.clients)}
        self.suffixes = LocalSuffixes()

    def refusal(self, join: fed.FedJoin, identity: dict[str, Any]) -> str | None:
        """Why ``join`` cannot join this federation, or ``None`` when it can."""
        theirs = {"mode": join.mode, "clients": join.clients, "round_steps": join.round_steps}
        ours = {"mode": self.mode, "clients": self.clients, "round_steps": self.round_steps}
        for key in ours:
            if theirs[key] != ours[key]:
                return f"federation {self.name!r} has {key}={ours[key]!r}, this client asks for {theirs[key]!r}"
        for key in ("model", "init_args", "fingerprint", "spec"):
            if identity.get(key) != self.identity.get(key):
                what = {"spec": "cut (placement)", "fingerprint": "model graph"}.get(key, key)
                return f"federation {self.name!r} trains another {what} than this client's: {key} differs"
        member = self.members[join.client]
        if member.record is not None and not member.done and member.gone_for(self.clock()) == 0.0:
            return f"client {join.client} of federation {self.name!r} is already connected"
        return None

    def join(self, client: int, record: SessionRecord) -> None:
        member = self.members[client]
        member.record, member.done = record, False
        self.suffixes.add(client, record.session)

    def leave(self, client: int) -> None:
        """Client ``client`` ended its session (its fit is over): nobody waits for it any more."""
        self.members[client].done = True
        self.suffixes.remove(client)

    def joined(self) -> list[int]:
        return [client for client, member in self.members.items() if member.record is not None]

    def finished(self) -> bool:
        return all(member.done for member in self.members.values())

    # the modes implement these
    def ready(self, client: int, op: fed.FedWait) -> bool:
        raise NotImplementedError

    def wait(self, client: int, op: fed.FedWait) -> fed.FedWaitReply:
        raise NotImplementedError

    def submit(self, client: int, op: fed.FedSubmit) -> None:
        raise NotImplementedError

    def status(self) -> str:
        raise NotImplementedError


class SequentialGroup(Group):
    """Turns in client order; the model (both parts, optimizer state too) passes from turn to turn.

    Turn ``t`` is client ``t % clients``'s. The server keeps the model as of the last turn's
    end: the server part (:class:`SuffixState`, with the optimizer state) and the device part
    as the client sealed it.
    """

    mode = "sequential"

    def __init__(self, join: fed.FedJoin, identity: dict[str, Any], clock: Callable[[], float]) -> None:
        super().__init__(join, identity, clock)
        self.turn = 0
        self.granted = False  # the turn's client has started it
        self.since = clock()  # when the turn became its client's
        self.sealed = _EMPTY
        self.suffix: SuffixState | None = None  # None: the first turn starts from client 0's own model
        self.skipped: list[int] = []

    @property
    def holder(self) -> int:
        return self.turn % self.clients

    def _advance(self) -> None:
        self.turn, self.granted, self.since = self.turn + 1, False, self.clock()

    def _skip_absent(self) -> None:
        """Pass over clients that finished, or that stayed away ``timeout`` seconds during their turn."""
        for _ in range(self.clients):
            member = self.members[self.holder]
            now = self.clock()
            late = not self.granted and now - self.since > self.timeout
            dropped = self.granted and member.gone_for(now) > self.timeout
            if not (member.done or late or dropped):
                return
            if self.finished():
                return
            reason = "finished" if member.done else "did not come" if late else "lost its connection"
            if not member.done:
                log.warning(
                    "federation %s: client %d %s within %g s: turn %d skipped",
                    self.name,
                    self.holder,
                    reason,
                    self.timeout,
                    self.turn,
                )
                self.skipped.append(self.holder)
            self._advance()

    def ready(self, client: int, op: fed.FedWait) -> bool:
        self._skip_absent()
        return self.holder == client

    def wait(self, client: int, op: fed.FedWait) -> fed.FedWaitReply:
        skipped, self.skipped = self.skipped, []
        if not self.ready(client, op):
            return fed.FedWaitReply(
                ready=False, round=self.turn, waiting_for=[self.holder], skipped=skipped, sealed=_EMPTY, state={}
            )
        if self.suffix is not None:
            self.suffixes.install(client, self.suffix)
        self.granted = True
        log.info("federation %s: turn %d (round %d) is client %d's", self.name, self.turn, self.round, client)
        return fed.FedWaitReply(
            ready=True, round=self.turn, waiting_for=[], skipped=skipped, sealed=self.sealed, state={}
        )

    @property
    def round(self) -> int:
        return self.turn // self.clients

    def submit(self, client: int, op: fed.FedSubmit) -> None:
        if op.round != self.turn or client != self.holder or not self.granted:
            log.warning(
                "federation %s: client %d ended turn %d, but the federation is at turn %d (client %d's): "
                "its steps are dropped",
                self.name,
                client,
                op.round,
                self.turn,
                self.holder,
            )
            return
        self.suffix = self.suffixes.snapshot(client, optimizers=True)
        self.sealed = op.sealed.clone()
        loss = f", loss {op.loss:.4f}" if op.loss is not None else ""
        log.info("federation %s: client %d ended turn %d%s", self.name, client, self.turn, loss)
        self._advance()

    def status(self) -> str:
        state = "training" if self.granted else "waiting for"
        return f"turn {self.turn} (round {self.round}), {state} client {self.holder}"


@dataclass
class _Contribution:
    device: dict[str, torch.Tensor]
    server: dict[str, torch.Tensor]
    samples: int


class SplitFedGroup(Group):
    """SplitFed V1: all clients at once; every round, both parts become the sample-weighted average.

    Round 0 is the federation's initial model, client 0's. Round ``r`` closes when every
    client that has not finished has contributed, or ``timeout`` seconds after its first
    contribution (the others are left out of that average).
    """

    mode = "splitfed"

    def __init__(self, join: fed.FedJoin, identity: dict[str, Any], clock: Callable[[], float]) -> None:
        super().__init__(join, identity, clock)
        self.round = -1  # the last closed round
        self.device: dict[str, torch.Tensor] = {}  # the last average of the device parts
        self.server: dict[str, torch.Tensor] = {}  # ... and of the server parts
        self.samples = 0
        self.contributions: dict[int, _Contribution] = {}
        self.opened_at: float | None = None
        self.left_out: list[int] = []

    def _close(self) -> None:
        weights = {client: float(c.samples) for client, c in self.contributions.items()}
        if self.round < 0:  # round 0: client 0's model as it is
            (first,) = self.contributions.values()
            self.device, self.server = dict(first.device), dict(first.server)
        else:
            if sum(weights.values()) <= 0:
                weights = dict.fromkeys(weights, 1.0)
            self.device = weighted_average({c: x.device for c, x in self.contributions.items()}, weights)
            self.server = weighted_average({c: x.server for c, x in self.contributions.items()}, weights)
        self.round += 1
        self.samples = int(sum(c.samples for c in self.contributions.values()))
        expected = [c for c, m in self.members.items() if not m.done]
        self.left_out = [c for c in expected if c not in self.contributions] if self.round else []
        log.info(
            "federation %s: round %d averaged over clients %s (%d samples)%s",
            self.name,
            self.round,
            sorted(self.contributions),
            self.samples,
            f"; left out: {self.left_out}" if self.left_out else "",
        )
        self.contributions, self.opened_at = {}, None

    def _due(self) -> bool:
        if not self.contributions:
            return False
        if self.round < 0:
            return 0 in self.contributions
        expected = {c for c, m in self.members.items() if not m.done}
        if expected <= set(self.contributions):
            return True
        return self.opened_at is not None and self.clock() - self.opened_at > self.timeout

    def ready(self, client: int, op: fed.FedWait) -> bool:
        if self._due():
            self._close()
        return self.round >= op.round

    def wait(self, client: int, op: fed.FedWait) -> fed.FedWaitReply:
        if not self.ready(client, op):
            waiting = sorted(c for c, m in self.members.items() if not m.done and c not in self.contributions)
            if self.round < 0:
                waiting = [0]
            return fed.FedWaitReply(
                ready=False, round=self.round, waiting_for=waiting, skipped=[], sealed=_EMPTY, state={}
            )
        self.suffixes.install(client, SuffixState(self.server))
        return fed.FedWaitReply(
            ready=True,
            round=self.round,
            waiting_for=[],
            skipped=list(self.left_out),
            sealed=_EMPTY,
            state=self.device,
            samples=self.samples,
        )

    def submit(self, client: int, op: fed.FedSubmit) -> None:
        if op.round != self.round + 1 or (self.round < 0 and client != 0):
            if self.round >= 0:
                log.warning(
                    "federation %s: client %d contributed to round %d, but round %d is open: left out",
                    self.name,
                    client,
                    op.round,
                    self.round + 1,
                )
            return
        server = self.suffixes.snapshot(client, optimizers=False).state
        self.contributions[client] = _Contribution({k: v.clone() for k, v in op.state.items()}, server, op.samples)
        if self.opened_at is None:
            self.opened_at = self.clock()
        loss = f", loss {op.loss:.4f}" if op.loss is not None else ""
        log.info("federation %s: client %d contributed to round %d%s", self.name, client, op.round, loss)

    def status(self) -> str:
        if self.round < 0:
            return "waiting for client 0's initial model"
        waiting = sorted(c for c, m in self.members.items() if not m.done and c not in self.contributions)
        return f"round {self.round + 1} open, {len(self.contributions)} contributed, waiting for {waiting}"


_MODES: dict[str, type[Group]] = {"sequential": SequentialGroup, "splitfed": SplitFedGroup}


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
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, poll_s: float = 0.5) -> None:
        self.groups: dict[str, Group] = {}
        self.by_session: dict[str, tuple[Group, int]] = {}
        self.clock, self.poll_s = clock, poll_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake held requests on ``loop`` when a federation changes."""
        self.loop = loop
        loop.call_soon_threadsafe(self._renew)

    def _renew(self) -> None:
        if self._event is not None:
            self._event.set()
        self._event = asyncio.Event()

    def _changed(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._renew)

    def member(self, record: SessionRecord | None, what: str) -> tuple[Group, int]:
        found = self.by_session.get(record.id) if record is not None else None
        if found is None:
            raise SessionError(f"{what} before 'fed_join': join a federation first")
        return found

    def join(self, op: fed.FedJoin, record: SessionRecord) -> fed.FedJoinReply:
        """Add the session to federation ``op.group`` (created on its first join)."""
        identity = {key: record.description.get(key) for key in ("model", "init_args", "fingerprint", "spec")}
        group = self.groups.get(op.group)
        if group is not None and group.finished():
            group = None  # every client of the last federation of that name finished: a new one starts
        if group is None:
            group = _MODES[op.mode](op, identity, self.clock)
            self.groups[op.group] = group
            log.info(
                "federation %s (%s, %d clients, %d steps a round) created",
                op.group,
                op.mode,
                op.clients,
                op.round_steps,
            )
        problem = group.refusal(op, identity)
        if problem is not None:
            raise SessionError(f"{problem}: every client of a federation trains the same model, cut and group size")
        group.join(op.client, record)
        self.by_session[record.id] = (group, op.client)
        log.info(
            "federation %s: client %d joined (%d of %d); %s",
            op.group,
            op.client,
            len(group.joined()),
            group.clients,
            group.status(),
        )
        self._changed()
        return fed.FedJoinReply(joined=group.joined(), round=getattr(group, "round", 0))

    def ready(self, op: Any, record: SessionRecord | None) -> bool:
        """Whether a ``fed_wait`` can run now (other ops always can)."""
        if not isinstance(op, fed.FedWait) or not op.hold or record is None or record.id not in self.by_session:
            return True
        group, client = self.by_session[record.id]
        return group.ready(client, op)

    def waiting(self) -> Waiting:
        return Waiting(self._event, self.poll_s)

    def wait(self, op: fed.FedWait, record: SessionRecord | None) -> fed.FedWaitReply:
        group, client = self.member(record, "fed_wait")
        reply = group.wait(client, op)
        if reply.ready:
            self._changed()
        else:
            log.info("federation %s: client %d waits: %s", group.name, client, group.status())
        return reply

    def submit(self, op: fed.FedSubmit, record: SessionRecord | None) -> None:
        group, client = self.member(record, "fed_submit")
        group.submit(client, op)
        self._changed()

    def leave(self, record: SessionRecord) -> None:
        """The session closed: its client finished."""
        found = self.by_session.pop(record.id, None)
        if found is None:
            return
        group, client = found
        group.leave(client)
        log.info(
            "federation %s: client %d finished; %s",
            group.name,
            client,
            "all finished" if group.finished() else group.status(),
        )
        self._changed()
