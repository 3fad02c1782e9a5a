"""The device's random state crosses once: later forwards say "the one you returned" (``rng_same``)."""

from __future__ import annotations

import pytest
import torch

from lightning_split.graph.describe import ModelDescription
from lightning_split.graph.programs import device_program, used_state
from lightning_split.runtime.placement import place_model
from lightning_split.serve.host import ModelHost
from lightning_split.transport import messages
from lightning_split.transport.protocol import SessionError
from tests.models import DagNet, digits


def _session_and_cut():
    torch.manual_seed(0)
    model = DagNet(dropout=0.5)  # dropout in the suffix: the server draws from the device's stream
    images = digits(8).tensors[0]
    plan = place_model(model, (images,), {}, cut="b")
    description = ModelDescription.of("tests.models:DagNet", dict(model.hparams), plan.traced, plan.example)
    hello = messages.Hello(
        **description.to_wire(),
        spec=plan.spec.to_json(),
        optimizers=[],
        state={key: tensor.detach() for key, tensor in used_state(plan.graph_module, plan.spec.server_nodes).items()},
    )
    session = ModelHost(lambda init: DagNet(**dict(init)), "tests.models:DagNet").open(hello)
    cut = list(device_program(plan.graph_module, plan.spec)(images)[: len(plan.spec.cut)])
    return session, [value.detach() for value in cut]


def test_rng_same_continues_from_the_state_the_server_returned():
    session, cut = _session_and_cut()
    flags = [False] * len(cut)
    state = torch.random.manual_seed(5).get_state()
    first, after_first = session.forward(0, cut, flags, True, False, state)
    sent, after_sent = session.forward(1, cut, flags, True, False, after_first)
    same, after_same = session.forward(2, cut, flags, True, False, None, rng_same=True)
    assert not torch.equal(first[0], sent[0])  # the stream moved on: a new dropout mask
    assert torch.equal(after_same, session.snapshot()["rng"])  # a restarted server continues the stream
    # the third forward started where the second ended, as if that state had been sent
    replay, after_replay = session.forward(3, cut, flags, True, False, after_sent)
    assert torch.equal(same[0], replay[0]) and torch.equal(after_same, after_replay)


def test_rng_same_needs_a_returned_state_and_no_other():
    session, cut = _session_and_cut()
    flags = [False] * len(cut)
    with pytest.raises(SessionError, match="no forward has returned one"):
        session.forward(0, cut, flags, True, False, None, rng_same=True)
    _, state = session.forward(1, cut, flags, True, False, torch.get_rng_state())
    with pytest.raises(SessionError, match="sent one too"):
        session.forward(2, cut, flags, True, False, state, rng_same=True)
