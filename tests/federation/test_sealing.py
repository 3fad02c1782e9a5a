"""The sealed device part: the server forwards bytes it can neither read nor alter."""

from __future__ import annotations

import pytest
import torch

from lightning_split.transport.sealing import Seal, SealError

KEY = "a passphrase the clients share"


def test_sealed_bytes_open_with_the_key_and_hide_the_tensors():
    weights = torch.linspace(-1, 1, 256)
    sealed = Seal(KEY, "digits").seal({"state": {"stem.0.weight": weights}})
    assert sealed.dtype == torch.uint8 and sealed.dim() == 1
    assert weights.numpy().tobytes() not in sealed.numpy().tobytes()  # the plaintext does not cross
    opened = Seal(KEY, "digits").open(sealed)
    torch.testing.assert_close(opened["state"]["stem.0.weight"], weights, atol=0, rtol=0)
    assert not torch.equal(sealed, Seal(KEY, "digits").seal({"state": {"stem.0.weight": weights}}))  # fresh nonce


def test_another_key_another_federation_or_a_changed_byte_is_refused():
    sealed = Seal(KEY, "digits").seal({"x": torch.ones(3)})
    with pytest.raises(SealError, match=r"same Federation\(key=\.\.\.\)"):
        Seal("another passphrase entirely", "digits").open(sealed)
    with pytest.raises(SealError, match="another federation"):
        Seal(KEY, "cifar").open(sealed)
    tampered = sealed.clone()
    tampered[-1] ^= 1
    with pytest.raises(SealError, match="changed on the way"):
        Seal(KEY, "digits").open(tampered)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Seal("short", "digits")
