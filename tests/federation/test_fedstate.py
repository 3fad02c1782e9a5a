"""Federations on disk: what a restarted server reads back is checked field by field, never trusted."""

from __future__ import annotations

import pytest
import torch

from lightning_split.serve.federation import FederationTable
from lightning_split.serve.fedstate import FederationStore
from lightning_split.transport.protocol import SessionError

MEMBERS = [{"session": "ab" * 16, "done": False}, {"session": None, "done": False}]
SEQUENTIAL = {
    "mode": "sequential",
    "clients": 2,
    "round_steps": 5,
    "timeout": 60.0,
    "identity": {"model": "tests.models:DagNet"},
    "members": MEMBERS,
    "turn": 2,
    "granted": True,
    "sealed": torch.arange(9, dtype=torch.uint8),
    "skipped": [],
    "suffix": {
        "state": {"head.weight": torch.ones(2, 2)},
        "optimizers": [{"head.weight": {"momentum_buffer": torch.zeros(2, 2)}}],
    },
}


def test_a_saved_federation_is_restored_with_its_turn_members_and_relayed_parts(tmp_path):
    FederationStore(tmp_path).save("digits", SEQUENTIAL)
    table = FederationTable(store=FederationStore(tmp_path))
    group = table.groups["digits"]
    assert (group.turn, group.granted, group.holder, group.sealed.tolist()) == (2, True, 0, list(range(9)))
    torch.testing.assert_close(group.suffix.state["head.weight"], torch.ones(2, 2))
    assert table.by_session == {"ab" * 16: (group, 0)}  # the session links back when it resumes
    assert (
        "federation digits status: sequential, joined [0] of 2; turn 2 (round 1), training client 0"
        in (table._shown["digits"])
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"turn": "2"}, r"field 'turn' is str"),
        ({"mode": "async"}, r"mode 'async'"),
        ({"clients": 0}, r"field 'clients' is 0, below 1"),
        ({"members": MEMBERS[:1]}, r"1 members for 2 clients"),
        ({"sealed": torch.ones(3)}, r"'sealed' is not a 1-d uint8 tensor"),
        ({"suffix": {"state": {"w": 1.0}, "optimizers": []}}, r"'state' is not a mapping of tensors"),
        ({"round_steps": 0}, r"'round_steps' is 0, below 1"),
    ],
)
def test_a_file_this_server_did_not_write_is_refused_with_what_is_wrong_and_the_fix(tmp_path, change, message):
    FederationStore(tmp_path).save("digits", {**SEQUENTIAL, **change})
    with pytest.raises(SessionError, match=message + r".*move it out of the state directory"):
        FederationTable(store=FederationStore(tmp_path))


def test_bytes_that_are_not_a_wire_frame_are_refused(tmp_path):
    store = FederationStore(tmp_path)
    (store.directory / "digits.lsw").write_bytes(b"\x80\x04 not a frame, never unpickled")
    with pytest.raises(SessionError, match="cannot be read"):
        FederationTable(store=FederationStore(tmp_path))
