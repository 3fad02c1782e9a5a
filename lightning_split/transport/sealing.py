"""Sealing the device part a federation relays through the server: end-to-end AEAD between clients.

In sequential mode the device part of the model (parameters, buffers, optimizer state)
passes from one client to the next through the server. The server knows the server part;
with the first layers too it could invert what a device sends it (its activations) back to
the raw data. So the clients seal the device part with a key they share and the server does
not have (``Federation(key=...)``): ChaCha20-Poly1305 (from ``cryptography``), a fresh
random nonce per seal, the federation's name as associated data. The server forwards the
sealed bytes; it can neither read nor alter them (a changed byte fails the tag).

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
        self._context = f"lightning-split federation {group}".encode()

    def seal(self, payload: Any) -> torch.Tensor:
        """``payload`` (wire values: dicts, tensors, numbers) encrypted and authenticated, as a uint8 tensor."""
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._cipher.encrypt(nonce, wire.encode(payload), self._context)
        return torch.frombuffer(bytearray(sealed), dtype=torch.uint8)

    def open(self, sealed: torch.Tensor, limits: wire.Limits | None = None) -> Any:
        """The payload :meth:`seal` sealed.

        Raises:
            SealError: the bytes were sealed with another key or for another federation, or changed.
        """
        from cryptography.exceptions import InvalidTag

        data = sealed.contiguous().numpy().tobytes()
        if len(data) <= _NONCE:
            raise SealError(f"sealed device part of {len(data)} bytes is too short to be one")
        try:
            plain = self._cipher.decrypt(data[:_NONCE], data[_NONCE:], self._context)
        except InvalidTag:
            raise SealError(
                "the device part relayed by the server cannot be opened: it was sealed with another key or for "
                "another federation, or changed on the way. Do all clients pass the same Federation(key=...)?"
            ) from None
        try:
            return wire.decode(plain, limits or wire.Limits(max_message_bytes=2**40))
        except wire.WireError as exc:
            raise SealError(f"the opened device part is not a payload: {exc}") from exc
