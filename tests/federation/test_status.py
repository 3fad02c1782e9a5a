"""`serve` shows the federations it hosts: a status line whenever one changes, and every --status-every seconds.

The sessions are driven op by op, so each change happens in a known order; the test waits
for each line (an event), never for a duration.
"""

from __future__ import annotations

import pytest
import torch

from lightning_split.transport.federation import FedSubmit
from tests.federated import join, session, until_logged, wait
from tests.helpers import ServeProcess

EMPTY = torch.zeros(0, dtype=torch.uint8)


@pytest.fixture(scope="module")
def server():
    process = ServeProcess("--model", "tests.models:DagNet", "--status-every", "0", verbose=True)
    yield process
    process.stop()


def _status_lines(server: ServeProcess, group: str) -> list[str]:
    marker = f"federation {group} status: "
    return [line.split(marker, 1)[1].strip() for line in list(server.stderr) if marker in line]


def test_a_sequential_federation_shows_who_joined_whose_turn_and_whom_it_waits_for(server):
    first = session(server.url)
    join(first, "shown", 0)
    wait(first)  # turn 0 is client 0's
    second = session(server.url)
    join(second, "shown", 1)
    first.call([FedSubmit(round=0, samples=32, sealed=torch.arange(5, dtype=torch.uint8))])
    first.call([messages_close()])
    until_logged(server, "federation shown status: sequential, joined [0, 1] of 2, finished [0]")
    assert _status_lines(server, "shown") == [
        "sequential, joined [0] of 2; turn 0 (round 0), waiting for client 0",
        "sequential, joined [0] of 2; turn 0 (round 0), training client 0",
        "sequential, joined [0, 1] of 2; turn 0 (round 0), training client 0",
        "sequential, joined [0, 1] of 2; turn 1 (round 0), waiting for client 1",
        "sequential, joined [0, 1] of 2, finished [0]; turn 1 (round 0), waiting for client 1",
    ]  # one line per change: none for the second client's fed_wait that changed nothing
    second.call([messages_close()])
    until_logged(server, "federation shown status: sequential, all 2 clients finished")


def test_a_splitfed_federation_shows_its_open_round_and_the_clients_not_in_yet(server):
    first, second = session(server.url), session(server.url)
    join(first, "rounds", 0, mode="splitfed")
    join(second, "rounds", 1, mode="splitfed")
    weight = {"stem.0.weight": torch.ones(8, 1, 3, 3)}
    first.call([FedSubmit(round=0, samples=0, sealed=EMPTY, state=weight)])
    wait(first, 0)  # round 0 (client 0's model) closes
    second.call([FedSubmit(round=1, samples=32, sealed=EMPTY, state=weight)])
    until_logged(server, "federation rounds status: splitfed, joined [0, 1] of 2; round 1 open, 1 contributed")
    assert _status_lines(server, "rounds") == [
        "splitfed, joined [0] of 2; waiting for client 0's initial model",
        "splitfed, joined [0, 1] of 2; waiting for client 0's initial model",
        "splitfed, joined [0, 1] of 2; round 1 open, 0 contributed, waiting for [0, 1]",
        "splitfed, joined [0, 1] of 2; round 1 open, 1 contributed, waiting for [0]",
    ]


def test_status_every_repeats_the_line_while_nothing_changes():
    periodic = ServeProcess("--model", "tests.models:DagNet", "--status-every", "0.05", verbose=True)
    try:
        join(session(periodic.url), "idle", 0)
        lines = until_logged(periodic, "federation idle status: ", count=3)  # one for the join, then repeats
        assert {line.split("status: ", 1)[1] for line in lines} == {
            "sequential, joined [0] of 2; turn 0 (round 0), waiting for client 0\n"
        }
    finally:
        periodic.stop()


def messages_close():
    from lightning_split.transport.messages import Close

    return Close()
