"""Fragmented messages through a real server: they arrive as fragments, and a retried reply keeps its bytes.

A reply is sent from its tensors' own memory and kept, as that frame, for a retry. The rule
that makes this safe (:class:`~lightning_split.transport.protocol.Sequencer`): a reply's
tensors are made for it. The test here breaks the connection after a ``state_dict`` reply and
changes the parameters before the reply is even sent; the device must get the state the reply
was made with, both times it is sent.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from lightning_split.serve.app import SplitServer
from lightning_split.serve.embedded import EmbeddedServer
from lightning_split.serve.host import ModelHost
from lightning_split.transport import fragments, messages, protocol, wire
from tests.faultproxy import FaultProxy
from tests.helpers import open_session
from tests.models import DagNet

SHARED = 1024  # DagNet's tensors are small: share those of 1 KiB and more, as larger models share theirs


@pytest.fixture
def shared_small_tensors():
    with mock.patch.object(fragments, "SHARED_BYTES", SHARED), mock.patch.object(wire, "SHARED_BYTES", SHARED):
        yield


@pytest.fixture
def server():
    with EmbeddedServer(ModelHost(lambda init: DagNet(**dict(init)), "tests.models:DagNet")) as embedded:
        yield embedded


def test_a_retried_state_reply_carries_the_state_it_was_made_with(server, shared_small_tensors):
    proxy = FaultProxy(int(server.url.rsplit(":", 1)[1]))
    runtime = None
    try:
        runtime, _, _ = open_session(proxy.url)
        (record,) = server.server.sessions.held.values()
        live = record.session.state_refs
        before = {key: tensor.detach().clone() for key, tensor in live.items()}
        made: list[protocol.Frame] = []
        reply = protocol.ServerProtocol.reply

        def reply_then_change(self, request, results):
            frame = reply(self, request, results)
            if any(isinstance(result, messages.StateDictReply) for result in results):
                made.append(frame)
                with torch.no_grad():  # as a federation installing an average would, before the reply is sent
                    for tensor in live.values():
                        tensor.add_(1.0)
            return frame

        proxy.drop_next_reply()
        with mock.patch.object(protocol.ServerProtocol, "reply", reply_then_change):
            (state,) = runtime.remote.call([messages.StateDict()])
        assert proxy.cuts == 1 and runtime.remote.reconnects == 1  # the reply was lost once and sent again
        (frame,) = made
        assert frame.tensors  # the reply went out as fragments pointing into tensors
        assert all(torch.equal(state.state[key], before[key]) for key in before)
        assert not any(torch.equal(live[key], before[key]) for key in before if live[key].is_floating_point())
    finally:
        if runtime is not None:
            runtime.close()
        proxy.close()


def test_requests_arrive_as_fragments_and_replies_decode(server, shared_small_tensors):
    seen: list[type] = []
    answer = SplitServer._answer

    def recording(self, connection, message, hold=True):
        seen.append(type(message))
        return answer(self, connection, message, hold)

    runtime = None
    with mock.patch.object(SplitServer, "_answer", recording):
        runtime, _, _ = open_session(server.url)
        try:
            payload = torch.randn(4096)
            (reply,) = runtime.remote.call([messages.Ping(payload=payload, reply_bytes=8 * SHARED)])
        finally:
            runtime.close()
    assert list in seen  # the hello (its state tensors) and the ping came as fragments, not joined
    assert reply.payload.shape == (8 * SHARED,) and not reply.payload.any()
