"""The federation ops: many devices training one model through one server (``Federation``).

A device in a federation opens its session with ``hello`` as any device does, then:

==========================  ========================================================
``fed_join``                join group ``group`` as client ``client`` of ``clients``
``fed_wait``                wait for its turn (sequential) or for round ``round``'s
                            average (splitfed); the server holds the request up to a
                            few seconds and answers ``ready=False`` (with whom it
                            waits for) if it is still not time
``fed_submit``              end a turn (sequential: the device part, sealed) or
                            contribute to round ``round``'s average (splitfed: the
                            device part and the samples it was trained on)
==========================  ========================================================

The server part of the model never crosses the wire here: the server takes it from the
client's session and installs the federation's into it. In sequential mode the device part
crosses only as ``sealed``: bytes encrypted and authenticated by the clients' shared key,
which the server forwards without being able to read them. In splitfed mode the server
averages the device parts, so they cross as tensors (``state``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from lightning_split.transport.schema import Op, Reply, clip

__all__ = ["GROUP_NAME", "MODES", "FedJoin", "FedJoinReply", "FedSubmit", "FedWait", "FedWaitReply"]

#: the modes a federation trains in.
MODES = ("sequential", "splitfed")
#: a federation's name: it appears in logs and file names.
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, kw_only=True, eq=False)
class FedJoinReply(Reply):
    """The federation as the server holds it: how many have joined, the round it is in."""

    label: ClassVar[str] = "reply to fed_join"
    joined: list[int]
    round: int


@dataclass(frozen=True, kw_only=True, eq=False)
class FedWaitReply(Reply):
    """Whether it is this client's time; if so, the model to continue from.

    ``sealed`` (sequential) is the device part the previous client handed over, as it sealed
    it (an empty tensor for the federation's first turn); ``state`` (splitfed) the averaged
    device part. ``waiting_for`` names the clients the server still waits for, ``skipped``
    those it gave up on since this client last heard.
    """

    label: ClassVar[str] = "reply to fed_wait"
    ready: bool
    round: int
    waiting_for: list[int]
    skipped: list[int]
    sealed: Tensor
    state: dict[str, Tensor]
    samples: int = 0  # splitfed: the samples the round's average weighs


@dataclass(frozen=True, kw_only=True, eq=False)
class FedJoin(Op):
    """Join federation ``group`` (created by its first member) with this connection's session."""

    name: ClassVar[str] = "fed_join"
    reply: ClassVar[type[Reply]] = FedJoinReply
    group: str
    clients: int
    client: int
    mode: str
    round_steps: int
    timeout: float  # seconds to wait for a client before going on without it

    def _check(self) -> None:
        if not GROUP_NAME.match(self.group):
            raise self._fail("group", f"must be 1-64 letters, digits, '_', '.' or '-', got {clip(self.group)}")
        if self.mode not in MODES:
            raise self._fail("mode", f"must be one of {', '.join(MODES)}, got {clip(self.mode)}")
        if not 1 <= self.clients <= 4096:
            raise self._fail("clients", f"must be from 1 to 4096, got {self.clients}")
        if not 0 <= self.client < self.clients:
            raise self._fail("client", f"must be from 0 to clients - 1 = {self.clients - 1}, got {self.client}")
        if self.round_steps < 1:
            raise self._fail("round_steps", f"must be at least 1, got {self.round_steps}")
        if not 0 < self.timeout <= 7 * 86400:
            raise self._fail("timeout", f"must be positive seconds (at most a week), got {self.timeout}")


@dataclass(frozen=True, kw_only=True, eq=False)
class FedWait(Op):
    """Wait for this client's next turn (sequential) or for round ``round``'s average (splitfed)."""

    name: ClassVar[str] = "fed_wait"
    reply: ClassVar[type[Reply]] = FedWaitReply
    round: int
    hold: bool = True  # False: answer at once, ready or not (so the device can say whom it waits for)

    def _check(self) -> None:
        if self.round < 0:
            raise self._fail("round", f"must be non-negative, got {self.round}")


@dataclass(frozen=True, kw_only=True, eq=False)
class FedSubmit(Op):
    """End this client's turn (sequential: ``sealed``) or contribute to round ``round`` (splitfed: ``state``)."""

    name: ClassVar[str] = "fed_submit"
    round: int
    samples: int
    sealed: Tensor
    state: dict[str, Tensor] = field(default_factory=dict)
    loss: float | None = None  # the client's average training loss over the round, for the server's log

    def _check(self) -> None:
        if self.round < 0:
            raise self._fail("round", f"must be non-negative, got {self.round}")
        if self.samples < 0:
            raise self._fail("samples", f"must be non-negative, got {self.samples}")
        if self.sealed.dim() != 1 or str(self.sealed.dtype) != "torch.uint8":
            raise self._fail("sealed", "must be a 1-d uint8 tensor (sealed bytes)")
