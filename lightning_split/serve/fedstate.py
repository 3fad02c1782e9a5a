"""Federations on disk (``serve --state-dir``): one file per federation, written atomically, in the wire format.

Next to the sessions' files, ``<state dir>/federations/<group>.lsw`` holds what a restarted
server needs to continue a federation: its settings, which session each client speaks
through, and the mode's state (sequential: the turn, the server part and the sealed device
part as the last turn left them; splitfed: the last averages and the open round's
contributions). :class:`~lightning_split.serve.federation.FederationTable` writes it
*before* the session whose op changed the federation is persisted; why that order makes
a restart exact is in its module's docstring. Nothing in a file is unpickled or executed,
and every field is checked when it is read (:class:`Fields`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lightning_split.serve.store import write_atomically
from lightning_split.transport import wire
from lightning_split.transport.federation import GROUP_NAME
from lightning_split.transport.protocol import SessionError

__all__ = ["FederationStore", "Fields"]

#: the version of the file's layout; a file of another version is refused, never guessed at.
VERSION = 1


class Fields:
    """Typed reads from one decoded file; a missing or mistyped field is a :class:`SessionError` naming it."""

    def __init__(self, content: Any, where: str) -> None:
        if not isinstance(content, dict):
            raise self._bad(where, "the file is not a mapping")
        self.content, self.where = content, where

    @staticmethod
    def _bad(where: str, what: str) -> SessionError:
        return SessionError(
            f"{where} is not a federation this server wrote ({what}): move it out of the state directory to start "
            "the federation afresh"
        )

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        value = self.content.get(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self._bad(self.where, f"field {key!r} is {wire_kind(value)}")
        return value

    def count(self, key: str, low: int = 0) -> int:
        value = self.get(key, int)
        if value < low:
            raise self._bad(self.where, f"field {key!r} is {value}, below {low}")
        return value

    def counts(self, key: str) -> list[int]:
        values = self.get(key, list)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise self._bad(self.where, f"field {key!r} is not a list of counts")
        return values

    def tensors(self, key: str) -> dict[str, torch.Tensor]:
        values = self.get(key, dict)
        if not all(isinstance(v, torch.Tensor) for v in values.values()):
            raise self._bad(self.where, f"field {key!r} is not a mapping of tensors")
        return values

    def sub(self, key: str) -> Fields:
        return Fields(self.get(key, dict), f"{self.where}, field {key!r}")


def wire_kind(value: Any) -> str:
    return "missing" if value is None else type(value).__name__


class FederationStore:
    """Persists federations in ``<directory>/federations``, one ``<group>.lsw`` file each."""

    def __init__(self, directory: str | Path, limits: wire.Limits | None = None) -> None:
        self.directory = Path(directory) / "federations"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.limits = limits or wire.Limits(max_message_bytes=2**40)

    def path(self, group: str) -> Path:
        """The federation's file; the name is checked here because it becomes a file name."""
        if not GROUP_NAME.match(group):
            raise SessionError(f"malformed federation name {group[:40]!r}")
        return self.directory / f"{group}.lsw"

    def save(self, group: str, state: dict[str, Any]) -> None:
        """Write the federation's file atomically."""
        write_atomically(self.path(group), wire.encode({"version": VERSION, "group": group, "state": state}))

    def load_all(self) -> Iterator[tuple[str, Fields]]:
        """Every saved federation: its name and its state (to be read by the group of its mode).

        Raises:
            SessionError: a file cannot be read or is not one this server wrote.
        """
        for path in sorted(self.directory.glob("*.lsw")):
            where = f"the saved federation {path}"
            try:
                content = Fields(wire.decode(path.read_bytes(), self.limits), where)
            except (OSError, wire.WireError) as exc:
                raise SessionError(f"{where} cannot be read: {exc}") from exc
            if content.get("version", int) != VERSION or content.get("group", str) != path.stem:
                raise Fields._bad(where, f"version or name does not match {path.name}")
            yield path.stem, content.sub("state")

    def delete(self, group: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(group).unlink()
