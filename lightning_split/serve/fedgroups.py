"""One federation's state and rules: who joined, whose turn or which round, what the model is.

:class:`SequentialGroup` (turns in client order; the model passes from turn to turn) and
:class:`SplitFedGroup` (all at once; sample-weighted averages every round) share
:class:`Group` (membership, the check that a joining client trains the same model). Every
group can be written down (:meth:`Group.state`, wire values only) and read back
(:func:`restore_group`), so a server restarted on its ``--state-dir`` continues it
(:mod:`lightning_split.serve.fedstate`). Their methods run on the server's compute thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_split.serve.fedstate import Fields
from lightning_split.serve.sessions import SessionRecord
from lightning_split.serve.suffixes import LocalSuffixes, SuffixState, weighted_average
from lightning_split.transport import federation as fed
from lightning_split.transport.errors import ProtocolError

log = logging.getLogger("lightning_split.serve.app")

_EMPTY = torch.zeros(0, dtype=torch.uint8)
_IDENTITY = ("model", "init_args", "fingerprint", "spec")


@dataclass
class Member:
    """One client of a federation: the session it speaks through (while it has one) and whether it finished.

    After a restart ``session`` names the client's session before it has come back
    (``record`` is ``None`` until it resumes); ``restored_at`` is when the wait for it began.
    """

    client: int
    record: SessionRecord | None = None
    done: bool = False
    session: str | None = None
    restored_at: float | None = None

    def gone_for(self, now: float) -> float:
        """Seconds this client has had no connection (0 while it has one)."""
        if self.done:
            return float("inf")
        if self.record is None:
            return float("inf") if self.restored_at is None else now - self.restored_at
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

    def refusal(self, join: fed.FedJoin, identity: dict[str, Any], session: str) -> str | None:
        """Why ``join`` (from session ``session``) cannot join this federation, or ``None`` when it can."""
        theirs = {"mode": join.mode, "clients": join.clients, "round_steps": join.round_steps}
        ours = {"mode": self.mode, "clients": self.clients, "round_steps": self.round_steps}
        for key in ours:
            if theirs[key] != ours[key]:
                return f"federation {self.name!r} has {key}={ours[key]!r}, this client asks for {theirs[key]!r}"
        for key in _IDENTITY:
            if identity.get(key) != self.identity.get(key):
                what = {"spec": "cut (placement)", "fingerprint": "model graph"}.get(key, key)
                return f"federation {self.name!r} trains another {what} than this client's: {key} differs"
        member = self.members[join.client]
        other = member.record is not None and member.record.id != session
        if other and not member.done and member.gone_for(self.clock()) == 0.0:
            return f"client {join.client} of federation {self.name!r} is already connected"
        return None

    def join(self, client: int, record: SessionRecord) -> None:
        """Client ``client`` speaks through ``record`` from now on (a join, a rejoin or a resume)."""
        member = self.members[client]
        member.record, member.done, member.session, member.restored_at = record, False, record.id, None
        self.suffixes.add(client, record.session)

    def leave(self, client: int) -> None:
        """Client ``client`` ended its session (its fit is over): nobody waits for it any more."""
        self.members[client].done = True
        self.suffixes.remove(client)

    def joined(self) -> list[int]:
        return [client for client, member in self.members.items() if member.session is not None]

    def finished(self) -> bool:
        return all(member.done for member in self.members.values())

    def mark(self) -> tuple:
        """What changes whenever the group's persistent state or status does (compared, never read)."""
        return tuple((m.session, m.done) for m in self.members.values())

    def status(self) -> str:
        """The mode's progress: turn or round, whom it waits for."""
        raise NotImplementedError

    def ready(self, client: int, op: fed.FedWait) -> bool:
        raise NotImplementedError

    def wait(self, client: int, op: fed.FedWait) -> fed.FedWaitReply:
        raise NotImplementedError

    def submit(self, client: int, op: fed.FedSubmit) -> None:
        raise NotImplementedError

    # -- on disk -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The group as wire values (:func:`restore_group` reads it back)."""
        members = [{"session": m.session, "done": m.done} for m in self.members.values()]
        settings = {"mode": self.mode, "clients": self.clients, "round_steps": self.round_steps}
        return {**settings, "timeout": self.timeout, "identity": self.identity, "members": members}

    def _restore(self, fields: Fields) -> None:
        """Read back what :meth:`state` wrote beyond the settings (the modes add theirs)."""
        members = fields.get("members", list)
        if len(members) != self.clients:
            raise Fields._bad(fields.where, f"{len(members)} members for {self.clients} clients")
        now = self.clock()
        for member, saved in zip(self.members.values(), members):
            entry = Fields(saved, fields.where)
            member.session, member.done = entry.get("session", (str, type(None))), entry.get("done", bool)
            member.restored_at = now if member.session is not None and not member.done else None


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

    @property
    def round(self) -> int:
        return self.turn // self.clients

    def _advance(self) -> None:
        self.turn, self.granted, self.since = self.turn + 1, False, self.clock()

    def _skip_absent(self) -> None:
        """Pass over clients that finished, or that stayed away ``timeout`` seconds during their turn."""
        for _ in range(self.clients):
            member = self.members[self.holder]
            now = self.clock()
            late = not self.granted and now - self.since > self.timeout
            dropped = self.granted and member.gone_for(now) > self.timeout
            if not (member.done or late or dropped) or self.finished():
                return
            if not member.done:
                reason = "did not come" if late else "lost its connection"
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

    def submit(self, client: int, op: fed.FedSubmit) -> None:
        if op.round != self.turn or client != self.holder or not self.granted:
            log.warning(
                "federation %s: client %d ended turn %d, but the federation is at turn %d (client %d's): ignored "
                "(a turn the server already counted, replayed after a restart, or one it skipped)",
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

    def mark(self) -> tuple:
        return (*super().mark(), self.turn, self.granted, len(self.skipped))

    def status(self) -> str:
        state = "training" if self.granted else "waiting for"
        return f"turn {self.turn} (round {self.round}), {state} client {self.holder}"

    def state(self) -> dict[str, Any]:
        suffix = None if self.suffix is None else {"state": self.suffix.state, "optimizers": self.suffix.optimizers}
        mine = {"turn": self.turn, "granted": self.granted, "sealed": self.sealed, "skipped": self.skipped}
        return {**super().state(), **mine, "suffix": suffix}

    def _restore(self, fields: Fields) -> None:
        super()._restore(fields)
        self.turn, self.granted = fields.count("turn"), fields.get("granted", bool)
        self.sealed, self.skipped = fields.get("sealed", torch.Tensor), fields.counts("skipped")
        if self.sealed.dim() != 1 or self.sealed.dtype != torch.uint8:
            raise Fields._bad(fields.where, "field 'sealed' is not a 1-d uint8 tensor")
        if fields.content.get("suffix") is not None:
            suffix = fields.sub("suffix")
            optimizers = suffix.get("optimizers", list)
            if not all(
                isinstance(states, dict) and all(isinstance(v, dict) for v in states.values()) for states in optimizers
            ):
                raise Fields._bad(fields.where, "the server part's optimizer states are not mappings by key")
            self.suffix = SuffixState(suffix.tensors("state"), optimizers)


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

    def _waiting(self) -> list[int]:
        if self.round < 0:
            return [0]
        return sorted(c for c, m in self.members.items() if not m.done and c not in self.contributions)

    def ready(self, client: int, op: fed.FedWait) -> bool:
        if self._due():
            self._close()
        return self.round >= op.round

    def wait(self, client: int, op: fed.FedWait) -> fed.FedWaitReply:
        if not self.ready(client, op):
            return fed.FedWaitReply(
                ready=False, round=self.round, waiting_for=self._waiting(), skipped=[], sealed=_EMPTY, state={}
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
                    "federation %s: client %d contributed to round %d, but round %d is open: ignored (a round "
                    "already averaged, replayed after a restart, or one it was left out of)",
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

    def mark(self) -> tuple:
        return (*super().mark(), self.round, tuple(sorted(self.contributions)))

    def status(self) -> str:
        if self.round < 0:
            return "waiting for client 0's initial model"
        return f"round {self.round + 1} open, {len(self.contributions)} contributed, waiting for {self._waiting()}"

    def state(self) -> dict[str, Any]:
        contributions = {
            str(client): {"device": c.device, "server": c.server, "samples": c.samples}
            for client, c in self.contributions.items()
        }
        averages = {"round": self.round, "device": self.device, "server": self.server, "samples": self.samples}
        return {**super().state(), **averages, "contributions": contributions, "left_out": self.left_out}

    def _restore(self, fields: Fields) -> None:
        super()._restore(fields)
        self.round = fields.count("round", low=-1)
        self.device, self.server = fields.tensors("device"), fields.tensors("server")
        self.samples, self.left_out = fields.count("samples"), fields.counts("left_out")
        contributions = fields.sub("contributions")
        for key in contributions.content:
            if not key.isdigit() or int(key) >= self.clients:
                raise Fields._bad(fields.where, f"a contribution of client {key[:20]!r}")
            entry = contributions.sub(key)
            device, server = entry.tensors("device"), entry.tensors("server")
            self.contributions[int(key)] = _Contribution(device, server, entry.count("samples"))
        self.opened_at = self.clock() if self.contributions else None  # the timeout starts again at a restart


MODES: dict[str, type[Group]] = {"sequential": SequentialGroup, "splitfed": SplitFedGroup}


def identity_of(record: SessionRecord) -> dict[str, Any]:
    """What every client of a federation must share: model, init arguments, graph and cut."""
    return {key: record.description.get(key) for key in _IDENTITY}


def restore_group(name: str, fields: Fields, clock: Callable[[], float]) -> Group:
    """The group :meth:`Group.state` wrote for federation ``name``.

    Raises:
        SessionError: the state is not one this server wrote.
    """
    mode = fields.get("mode", str)
    if mode not in MODES:
        raise Fields._bad(fields.where, f"mode {mode[:20]!r}")
    try:
        join = fed.FedJoin(
            group=name,
            clients=fields.count("clients", low=1),
            client=0,
            mode=mode,
            round_steps=fields.count("round_steps", low=1),
            timeout=float(fields.get("timeout", (int, float))),
        )
    except ProtocolError as exc:
        raise Fields._bad(fields.where, str(exc)) from None
    group = MODES[mode](join, fields.get("identity", dict), clock)
    group._restore(fields)
    return group
