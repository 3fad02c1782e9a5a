"""The sealed device part: the server forwards bytes it can neither read, nor alter, nor replay from an older turn."""

from __future__ import annotations

import pytest
import torch

from lightning_split import Federation
from lightning_split.runtime.federation import FederatedRun
from lightning_split.transport.federation import FedWaitReply
from lightning_split.transport.sealing import Seal, SealError

KEY = "a passphrase the clients share"


def test_sealed_bytes_open_with_the_key_and_hide_the_tensors():
    weights = torch.linspace(-1, 1, 256)
    sealed = Seal(KEY, "digits").seal({"state": {"stem.0.weight": weights}}, turn=3)
    assert sealed.dtype == torch.uint8 and sealed.dim() == 1
    assert weights.numpy().tobytes() not in sealed.numpy().tobytes()  # the plaintext does not cross
    turn, opened = Seal(KEY, "digits").open(sealed)
    assert turn == 3
    torch.testing.assert_close(opened["state"]["stem.0.weight"], weights, atol=0, rtol=0)
    again = Seal(KEY, "digits").seal({"state": {"stem.0.weight": weights}}, turn=3)
    assert not torch.equal(sealed, again)  # fresh nonce


def test_another_key_another_federation_or_a_changed_byte_is_refused():
    sealed = Seal(KEY, "digits").seal({"x": torch.ones(3)}, turn=0)
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


def test_the_turn_is_bound_an_older_device_part_is_refused_and_a_restamped_one_fails_the_tag():
    seal = Seal(KEY, "digits")
    sealed = seal.seal({"x": torch.ones(3)}, turn=2)
    assert seal.open(sealed, newest=2, before=3)[0] == 2  # the newest known device part itself is fine
    with pytest.raises(SealError, match=r"sealed at turn 2, but this client already knows turn 4.*replaying an older"):
        seal.open(sealed, newest=4, before=6)
    with pytest.raises(SealError, match=r"about to train turn 2.*refused"):
        seal.open(sealed, newest=-1, before=2)  # sealed at the turn about to start: not genuine
    restamped = sealed.clone()
    restamped[12:20] = torch.tensor(list((5).to_bytes(8, "big")), dtype=torch.uint8)  # claim turn 5
    with pytest.raises(SealError, match=r"changed on the way \(its turn too\)"):
        seal.open(restamped, newest=4)


def _reply(turn: int, sealed: torch.Tensor) -> FedWaitReply:
    return FedWaitReply(ready=True, round=turn, waiting_for=[], skipped=[], sealed=sealed, state={})


def test_a_client_refuses_a_replayed_device_part_or_none_once_it_has_seen_a_turn():
    federation = Federation(group="digits", clients=3, client=1, mode="sequential", round_steps=5, key=KEY)
    run = FederatedRun(federation)
    run.newest = 4  # this client sealed turn 4
    old = Seal(KEY, "digits").seal({"state": {}, "optimizers": []}, turn=1)
    with pytest.raises(SealError, match=r"turn 1, but this client already knows turn 4"):
        run._take_turn(_reply(7, old))
    with pytest.raises(SealError, match=r"no device part for turn 7, but this client knows turn 4"):
        run._take_turn(_reply(7, torch.zeros(0, dtype=torch.uint8)))
    assert run.turn == 0  # nothing was taken over
