"""The errors of the protocol and the connection, one module below the modules that raise them.

:mod:`lightning_split.transport.protocol` re-exports the protocol's, and
:mod:`lightning_split.transport.client` :class:`ConnectionFailed`; import them from there.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message breaks the protocol; the text names the field and the rule.

    Attributes:
        detail: the rule that was broken (``"field 'id' must be int, got str"``).
        field: the field that broke it, when one did.
        where: the message it was found in (``"op 1 (forward)"``), when known.
    """

    def __init__(self, detail: str, field: str | None = None, where: str | None = None) -> None:
        super().__init__(f"{where}: {detail}" if where else detail)
        self.detail, self.field, self.where = detail, field, where

    def at(self, where: str) -> ProtocolError:
        """The same error, said to be found in ``where``."""
        return ProtocolError(self.detail, self.field, where)


class SessionError(RuntimeError):
    """A request the session cannot honour; the message says what and why. Ends the request, not the server."""


class RemoteError(RuntimeError):
    """The server refused or failed a request; carries the server's explanation."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"server error ({kind}): {message}")
        self.kind = kind
        self.message = message


class ConnectionFailed(ConnectionError):
    """The server could not be reached or refused the handshake; says which and what to do."""
