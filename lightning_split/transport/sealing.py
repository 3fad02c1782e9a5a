"""Sealing the device part a federation relays through the server: end-to-end AEAD between clients.

In sequential mode the device part of the model (parameters, buffers, optimizer state)
passes from one client to the next through the server. The server knows the server part;
with the first layers too it could invert what a device sends it (its activations) back to
the raw data. So the clients seal the device part with a key they share and the server does
not have (``Federation(key=...)``): ChaCha20-Poly1305 (from ``cryptography``), a fresh
random nonce per seal, the federation's name and the turn the device part was sealed at as
associated data. The server forwards the sealed bytes; it can neither read nor alter them
(a changed byte fails the tag), nor pass an older device part off as a newer one: the turn
travels in clear but authenticated, and :meth:`Seal.open` refuses a device part older than
the newest one the receiving client knows of (one it sealed or opened itself).

What binding cannot stop: a server may legitimately skip absent clients, so a client cannot
tell a skipped turn from a turn the server hid; it can only refuse to go back behind what it
has seen. Sealed bytes are ``nonce (12) | turn (8, big-endian) | ciphertext and tag``.

The plaintext is a :mod:`~lightning_split.transport.wire` frame: nothing opened is unpickled.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from lightning_split.transport import wire

__all__ = ["KEY_BYTES", "Seal", "SealError"]

KEY_BYTES = 32
_NONCE = 12
_TURN = 8


class SealError(ValueError):
    """Sealed bytes could not be opened: another key, or bytes changed on the way."""


class Seal:
    """Seals and opens payloads for one federation.

    Args:
        key: the clients' shared secret: 32 bytes, or text (a passphrase or 64 hex digits),
            from which the cipher key is derived (HKDF-SHA256) with the federation's name.
        group: the federation's name (it binds sealed bytes to this federation).
    """

    def __init__(self, key: bytes | str, group: str) -> None:
        try:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        except ImportError as exc:  # pragma: no cover - cryptography is a declared dependency of federations
            raise ImportError(
                "sealing a federation's device part needs the `cryptography` package: "
                "pip install lightning-split[federation]"
            ) from exc
        material = key.encode() if isinstance(key, str) else bytes(key)
        if len(material) < 16:
            raise ValueError(f"a federation key needs at least 16 bytes of secret, got {len(material)}")
        derived = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=b"lightning-split federation", info=group.encode()
        ).derive(material)
        self._cipher = ChaCha20Poly1305(derived)
        self._context = f"lightning-split federation {group} turn ".encode()

    def seal(self, payload: Any, turn: int) -> torch.Tensor:
        """``payload`` (wire values: dicts, tensors, numbers) sealed at ``turn``, as a uint8 tensor."""
        if not 0 <= turn < 2**63:
            raise ValueError(f"a turn is a count, got {turn}")
        nonce, stamp = os.urandom(_NONCE), turn.to_bytes(_TURN, "big")
        sealed = nonce + stamp + self._cipher.encrypt(nonce, wire.encode(payload), self._context + stamp)
        return torch.frombuffer(bytearray(sealed), dtype=torch.uint8)

    def open(
        self, sealed: torch.Tensor, newest: int = -1, before: int | None = None, limits: wire.Limits | None = None
    ) -> tuple[int, Any]:
        """The turn it was sealed at and the payload :meth:`seal` sealed.

        Args:
            newest: the newest turn the opening client knows was completed: an older device
                part is a replay and is refused.
            before: the turn about to start: a device part sealed at it or later cannot be genuine.

        Raises:
            SealError: the bytes were sealed with another key, for another federation or at
                another turn than they say, or changed; or they are older than ``newest``.
        """
        from cryptography.exceptions import InvalidTag

        data = sealed.contiguous().numpy().tobytes()
        if len(data) <= _NONCE + _TURN:
            raise SealError(f"sealed device part of {len(data)} bytes is too short to be one")
        stamp = data[_NONCE : _NONCE + _TURN]
        try:
            plain = self._cipher.decrypt(data[:_NONCE], data[_NONCE + _TURN :], self._context + stamp)
        except InvalidTag:
            raise SealError(
                "the device part relayed by the server cannot be opened: it was sealed with another key or for "
                "another federation, or changed on the way (its turn too). Do all clients pass the same "
                "Federation(key=...)?"
            ) from None
        turn = int.from_bytes(stamp, "big")
        if turn < newest or (before is not None and turn >= before):
            raise SealError(
                f"the server handed over the device part sealed at turn {turn}, but this client "
                + (f"already knows turn {newest}" if turn < newest else f"is about to train turn {before}")
                + ": a server replaying an older device part is refused. Restart the federation from a checkpoint, "
                "and check the server"
            )
        try:
            return turn, wire.decode(plain, limits or wire.Limits(max_message_bytes=2**40))
        except wire.WireError as exc:
            raise SealError(f"the opened device part is not a payload: {exc}") from exc
