"""Federation faults against a real `serve` process: refusals, absent clients skipped or left out, rejoining.

The clients here are bare sessions driven op by op (the ops a ``FederatedRun`` sends), so
each event happens in a known order. A client "drops" by never coming: the server gives up
on it after the federation's ``timeout``; the tests wait for the server's answer, never sleep.
"""

from __future__ import annotations

import pytest
import torch

from lightning_split.transport.federation import FedSubmit, FedWait
from lightning_split.transport.protocol import RemoteError
from tests.federated import join, session, wait
from tests.helpers import ServeProcess

EMPTY = torch.zeros(0, dtype=torch.uint8)


@pytest.fixture(scope="module")
def server():
    process = ServeProcess("--model", "tests.models:DagNet", verbose=True)
    yield process
    process.stop()


def test_a_client_of_another_group_size_cut_model_or_mode_is_refused(server):
    first = session(server.url)
    join(first, "refusals", 0)
    with pytest.raises(RemoteError, match=r"clients=2, this client asks for 3.*same model, cut and group size"):
        join(session(server.url), "refusals", 1, clients=3)
    with pytest.raises(RemoteError, match=r"another cut \(placement\)"):
        join(session(server.url, cut="b"), "refusals", 1)
    with pytest.raises(RemoteError, match=r"another init_args"):
        join(session(server.url, lr=0.5), "refusals", 1)
    with pytest.raises(RemoteError, match=r"mode='sequential', this client asks for 'splitfed'"):
        join(session(server.url), "refusals", 1, mode="splitfed")
    with pytest.raises(RemoteError, match=r"client 0 of federation 'refusals' is already connected"):
        join(session(server.url), "refusals", 0)
    assert join(session(server.url), "refusals", 1).joined == [0, 1]  # a matching client still joins


def test_sequential_skips_a_client_that_does_not_come_and_it_rejoins_next_round(server):
    first = session(server.url)
    join(first, "skip", 0, timeout=1.0)
    assert wait(first).round == 0
    first.call([FedSubmit(round=0, samples=32, sealed=torch.arange(7, dtype=torch.uint8))])
    again = wait(first)  # turn 1 is client 1's, which never joined: skipped after the timeout
    assert (again.round, again.skipped) == (2, [1])
    assert again.sealed.tolist() == list(range(7))  # the server forwards the sealed bytes as they were
    assert any("client 1 did not come within 1 s: turn 1 skipped" in line for line in server.stderr)
    second = session(server.url)
    join(second, "skip", 1, timeout=1.0)  # client 1 arrives: the next of its turns is its
    first.call([FedSubmit(round=2, samples=32, sealed=torch.arange(3, dtype=torch.uint8))])
    granted = wait(second)
    assert granted.round == 3 and granted.sealed.tolist() == [0, 1, 2]


def test_splitfed_leaves_an_absent_client_out_of_the_average_and_it_rejoins(server):
    first = session(server.url)
    join(first, "leftout", 0, mode="splitfed", timeout=1.0)
    weight = {"stem.0.weight": torch.full((8, 1, 3, 3), 2.0)}
    first.call([FedSubmit(round=0, samples=0, sealed=EMPTY, state=weight)])
    assert wait(first, 0).round == 0
    first.call([FedSubmit(round=1, samples=32, sealed=EMPTY, state={"stem.0.weight": torch.ones(8, 1, 3, 3)})])
    averaged = wait(first, 1)  # client 1 never contributed: round 1 is averaged without it after the timeout
    assert averaged.skipped == [1] and averaged.samples == 32
    torch.testing.assert_close(averaged.state["stem.0.weight"], torch.ones(8, 1, 3, 3))
    assert any("round 1 averaged over clients [0] (32 samples); left out: [1]" in line for line in server.stderr)
    late = session(server.url)
    join(late, "leftout", 1, mode="splitfed", timeout=1.0)
    caught_up = wait(late, 0)  # it rejoins with the newest average
    assert caught_up.round == 1
    torch.testing.assert_close(caught_up.state["stem.0.weight"], torch.ones(8, 1, 3, 3))


def test_federation_ops_before_joining_are_refused_and_the_session_still_serves(server):
    remote = session(server.url)
    with pytest.raises(RemoteError, match="before 'fed_join'"):
        remote.call([FedWait(round=0)])
    join(remote, "late-joiner", 0, clients=1)
    assert wait(remote).round == 0
