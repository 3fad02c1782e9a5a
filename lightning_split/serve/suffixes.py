"""The server parts of a federation's clients, and their weighted average: one small interface.

A federation keeps one server part (suffix) per client: each client's session holds its
own, and the federation moves state between them (sequential: the shared part passes from
one client's session to the next; splitfed: every session gets the round's average).
:class:`SuffixPool` is all the federation asks of them, so the suffixes can later live
elsewhere: a pool of ``torch.distributed`` workers (one per GPU) would own the sessions of
the clients assigned to it, answer :meth:`SuffixPool.snapshot` and :meth:`SuffixPool.install`
for them, and compute :meth:`SuffixPool.average` as a weighted partial sum per worker
followed by one ``all_reduce``. :class:`LocalSuffixes` is the in-process pool ``serve`` uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lightning_split.serve.session import ServerSession

__all__ = ["LocalSuffixes", "SuffixPool", "SuffixState", "weighted_average"]


@dataclass
class SuffixState:
    """A server part as the federation moves it: parameters and buffers, and (optionally) optimizer state.

    ``optimizers`` holds, per mirrored optimizer, the per-parameter state by state key (empty
    when the state stays with each client, as in splitfed).
    """

    state: dict[str, torch.Tensor]
    optimizers: list[dict[str, dict[str, Any]]] = field(default_factory=list)


class SuffixPool(Protocol):
    """The per-client server parts of one federation."""

    def add(self, client: int, session: ServerSession) -> None:
        """Client ``client``'s server part is (from now on) ``session``'s."""

    def remove(self, client: int) -> None:
        """Forget client ``client``'s server part (its session ended)."""

    def snapshot(self, client: int, optimizers: bool) -> SuffixState:
        """A copy of client ``client``'s server part (with its optimizer state when ``optimizers``)."""

    def install(self, client: int, suffix: SuffixState) -> None:
        """Overwrite client ``client``'s server part with ``suffix`` (the entries it holds)."""


def weighted_average(states: Mapping[int, Mapping[str, torch.Tensor]], weights: Mapping[int, float]) -> dict:
    """The average of floating-point entries over ``states``, client ``c`` weighted by ``weights[c]``.

    Entries that are not floating point (``num_batches_tracked``) are left out: each client
    keeps its own. Clients are summed in increasing order, in float32 as the tensors are, so
    anyone can compute the same average (the tests do, locally).
    """
    clients = sorted(states)
    total = float(sum(weights[client] for client in clients))
    if not clients or total <= 0:
        raise ValueError("an average needs at least one client with a positive weight")
    first = states[clients[0]]
    average: dict[str, torch.Tensor] = {}
    for key, tensor in first.items():
        if not tensor.is_floating_point():
            continue
        accumulated = torch.zeros_like(tensor)
        for client in clients:
            accumulated.add_(states[client][key].to(tensor.dtype), alpha=weights[client] / total)
        average[key] = accumulated
    return average


class LocalSuffixes:
    """:class:`SuffixPool` over the sessions of this server process."""

    def __init__(self) -> None:
        self.sessions: dict[int, ServerSession] = {}

    def add(self, client: int, session: ServerSession) -> None:
        self.sessions[client] = session

    def remove(self, client: int) -> None:
        self.sessions.pop(client, None)

    def __contains__(self, client: int) -> bool:
        return client in self.sessions

    def snapshot(self, client: int, optimizers: bool) -> SuffixState:
        session = self.sessions[client]
        state = {key: tensor.detach().clone().cpu() for key, tensor in session.state_refs.items()}
        states = []
        if optimizers:
            for index in range(len(session.mirrors)):
                states.append(
                    {
                        key: {name: _copy(value) for name, value in entry.items()}
                        for key, entry in session.optimizer_state(index).items()
                    }
                )
        return SuffixState(state, states)

    def install(self, client: int, suffix: SuffixState) -> None:
        session = self.sessions[client]
        with torch.no_grad():
            for key, value in suffix.state.items():
                target = session.state_refs.get(key)
                if target is not None:
                    target.copy_(value)
        for index, states in enumerate(suffix.optimizers):
            if index < len(session.mirrors) and session.mirrors[index].optimizer is not None:
                session.mirrors[index].optimizer.state.clear()
                copied = {key: {name: _copy(value) for name, value in entry.items()} for key, entry in states.items()}
                session.load_optimizer_state(index, copied)


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value
