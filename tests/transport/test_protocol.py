"""The sans-I/O protocol without a network: sequence numbers, retries, resume, deferred ops, malformed messages.

Both sides are driven directly: :class:`DeviceProtocol` makes the bytes a device would send,
:class:`ServerProtocol` parses them as the server would, and the replies go back the same way.
"""

from __future__ import annotations

import pytest
import torch

from lightning_split.transport import messages, protocol, wire
from lightning_split.transport.protocol import DeviceProtocol, ProtocolError, RemoteError, ServerProtocol

SESSION = "0123456789abcdef" * 2
HELLO = messages.Hello(
    model="m:M", init_args={}, fingerprint="f", example={}, spec={}, optimizers=[], state={"w": torch.ones(2)}
)
HELLO_REPLY = messages.HelloReply(device="cpu", rng_sync=True, session=SESSION, persistent=False)
STEP = messages.Step(optimizer=0, hparams=[{"lr": 0.1}])
ZERO = messages.ZeroGrad(optimizer=0, set_to_none=True)
STATE = messages.StateDict()
STATE_REPLY = messages.StateDictReply(state={"w": torch.zeros(2)})


def raw(payload: dict) -> bytes:
    return wire.encode(payload)


def test_sequencer_rules_without_a_network():
    """Retry gets the cached reply; after a restore the durable request replays only its unapplied ops."""
    ops = (ZERO, STATE)
    sequencer = protocol.Sequencer()
    first = protocol.Request(0, ops)
    assert sequencer.admit(first) is first
    sequencer.answered(first, b"reply-0")
    assert sequencer.admit(protocol.Request(0, ops)) == b"reply-0"
    with pytest.raises(protocol.ProtocolError, match="out of order"):
        sequencer.admit(protocol.Request(2, ops))
    restored = protocol.Sequencer(last_seq=5, applied_ops=1, durable=5)
    replay = restored.admit(protocol.Request(5, ops))
    assert isinstance(replay, protocol.Request) and replay.skip == 1
    restored.answered(replay, b"reply-5")
    assert restored.admit(protocol.Request(6, ops)).skip == 0

    client = protocol.DeviceProtocol(keep_log=True)
    for _ in range(3):
        client.request([STATE])
    assert [sent.seq for sent in client.replay_from(1)] == [1, 2]
    client.receive(raw({"v": 1, "seq": 2, "results": [{}], "durable": 2}), client.log[-1])
    with pytest.raises(protocol.ProtocolError, match="cannot replay from request 1"):
        client.replay_from(1)


def _open() -> tuple[DeviceProtocol, ServerProtocol]:
    """A device and a server protocol after a hello and its reply."""
    device, server = DeviceProtocol(), ServerProtocol()
    sent = device.request([HELLO])
    request = server.receive(sent.data)
    assert isinstance(request, protocol.Request) and request.ops == (HELLO,)
    server.attach(protocol.Sequencer())
    (reply,) = device.receive(server.reply(request, [HELLO_REPLY]), sent)
    assert reply == HELLO_REPLY
    return device, server


def test_sequence_numbers_count_ordered_requests_only():
    device, server = _open()
    assert device.seq == 0
    ping = device.request([messages.Ping(payload=None, reply_bytes=0)])
    assert ping.seq == 0 and not ping.ordered and device.seq == 0 and ping not in device.log
    request = server.receive(ping.data)
    assert isinstance(request, protocol.Request) and not request.ordered
    state = device.request([STATE])
    assert state.seq == 1 and state.ordered
    request = server.receive(state.data)
    assert isinstance(request, protocol.Request) and request.seq == 1
    (reply,) = device.receive(server.reply(request, [STATE_REPLY]), state)
    assert torch.equal(reply.state["w"], torch.zeros(2))
    with pytest.raises(ProtocolError, match="request 3 out of order: the last request was 1"):
        server.receive(protocol.encode_request(3, [STATE]))


def test_a_retry_is_answered_from_the_cache_not_run_again():
    device, server = _open()
    sent = device.request([STATE])
    request = server.receive(sent.data)
    answer = server.reply(request, [STATE_REPLY])
    assert server.receive(sent.data) == answer  # the same bytes again: the caller sends them, runs nothing
    failed = device.request([messages.OptimizerState(optimizer=9)])
    request = server.receive(failed.data)
    error = server.error(request, "SessionError", "optimizer index 9 out of range")
    assert server.receive(failed.data) == error  # an error is an answer too
    with pytest.raises(RemoteError, match="optimizer index 9") as info:
        device.receive(error, failed)
    assert info.value.kind == "SessionError"


def test_deferred_ops_ride_along_with_the_next_request_and_their_results_are_not_returned():
    device, server = _open()
    device.defer(STEP)
    device.defer(ZERO)
    with pytest.raises(ProtocolError, match="'state_dict' needs an answer"):
        device.defer(STATE)
    sent = device.request([STATE])
    assert sent.deferred == 2 and sent.ops == (STEP, ZERO, STATE) and not device.deferred
    request = server.receive(sent.data)
    assert request.ops == (STEP, ZERO, STATE)
    (reply,) = device.receive(server.reply(request, [None, None, STATE_REPLY]), sent)
    assert isinstance(reply, messages.StateDictReply)
    ping = device.request([messages.Ping(payload=None, reply_bytes=0)])
    device.defer(STEP)
    assert len(device.request([messages.Ping(payload=None, reply_bytes=0)]).ops) == 1  # unordered: none ride
    assert ping.deferred == 0 and device.deferred == [STEP]


def test_resume_continues_the_sessions_sequence_on_a_new_connection():
    device, first = _open()
    sent = device.request([STATE])
    first.reply(first.receive(sent.data), [STATE_REPLY])
    sequencer = first.sequencer

    second = ServerProtocol()
    with pytest.raises(ProtocolError, match="first op must be 'hello'"):
        second.receive(device.request([STATE]).data)
    device.seq -= 1  # that request never ran
    resume = device.request([messages.Resume(session=SESSION)])
    assert resume.seq == 1 and not resume.ordered
    request = second.receive(resume.data)
    assert isinstance(request.ops[0], messages.Resume)
    second.attach(sequencer)
    info = messages.ResumeReply(session=SESSION, last_seq=sequencer.last_seq, have_reply=True, durable=None)
    assert device.receive(second.reply(request, [info]), resume) == [info]
    assert second.receive(sent.data) == sequencer.last_reply  # the retry of the last request, answered again
    following = device.request([STATE])
    assert isinstance(second.receive(following.data), protocol.Request)
    with pytest.raises(ProtocolError, match="'resume' must be the only op"):
        second.receive(
            protocol.encode_request(2, [messages.Resume(session=SESSION), messages.Ping(payload=None, reply_bytes=0)])
        )


def test_after_a_restore_the_server_skips_applied_ops_and_says_so():
    device, server = DeviceProtocol(keep_log=True), ServerProtocol()
    device.defer(STEP)
    sent = device.request([STATE])
    server.attach(protocol.Sequencer(last_seq=0, applied_ops=1, durable=0))
    request = server.receive(sent.data)
    assert request.skip == 1
    data = server.reply(request, [None, STATE_REPLY])
    assert wire.decode(data)["skipped"] == 1
    assert device.receive(data, sent) == [STATE_REPLY]
    hello = DeviceProtocol().request([HELLO])  # a skipped hello has no result, and the reply says why
    assert DeviceProtocol().receive(raw({"v": 1, "seq": 0, "results": [None], "skipped": 1}), hello) == [None]
    with pytest.raises(ProtocolError, match=r"reply to op 0 \(hello\): expected an object, got null"):
        DeviceProtocol().receive(raw({"v": 1, "seq": 0, "results": [None]}), hello)


@pytest.mark.parametrize(
    ("payload", "fragment", "field"),
    [
        ({"v": 2, "seq": 0, "ops": []}, "protocol version 2 is not supported", None),
        ({"v": 1, "seq": -1, "ops": [{"op": "close"}]}, "'seq' must be a non-negative integer", "seq"),
        ({"v": 1, "seq": True, "ops": [{"op": "close"}]}, "'seq' must be a non-negative integer", "seq"),
        ({"v": 1, "seq": 0, "ops": []}, "'ops' must be a non-empty list", "ops"),
        ({"v": 1, "seq": 0, "ops": [{"op": "launch"}]}, "op 0: unknown op 'launch'", "op"),
        ({"v": 1, "seq": 0, "ops": [7]}, "op 0: expected an object, got int", None),
        ({"v": 1, "seq": 0, "ops": [{"op": "close", "now": 1}]}, "op 0 (close): unexpected field(s) now", "now"),
        ({"v": 1, "seq": 0, "ops": [{"op": "close"}, {"op": "forward", "id": 0}]}, "op 1 (forward): missing", "values"),
        (
            {"v": 1, "seq": 0, "ops": [{"op": "release", "ids": [1, "2"]}]},
            "op 0 (release): field 'ids' item 1 must be int, got str",
            "ids",
        ),
        (
            {"v": 1, "seq": 0, "ops": [{"op": "ping", "payload": None, "reply_bytes": False}]},
            "op 0 (ping): field 'reply_bytes' must be int, got bool",
            "reply_bytes",
        ),
    ],
)
def test_malformed_requests_are_refused_naming_what_is_wrong(payload, fragment, field):
    with pytest.raises(ProtocolError) as info:
        ServerProtocol().receive(raw(payload))
    assert fragment in str(info.value) and info.value.field == field


def test_text_and_undecodable_frames_are_protocol_errors():
    with pytest.raises(ProtocolError, match="binary messages only"):
        ServerProtocol().receive("text")
    with pytest.raises(ProtocolError, match="undecodable message"):
        ServerProtocol().receive(b"\x00garbage")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"v": 1, "seq": 5, "results": [{}]}, "reply to request 5 received while waiting for 0"),
        ({"v": 1, "seq": 0, "results": []}, "must carry a 'results' list of 1"),
        (
            {"v": 1, "seq": 0, "results": [{"w": 1}]},
            "reply to op 0 (state_dict): field 'state' entry 'w' must be tensor",
        ),
        ({"v": 1, "seq": 0, "results": [{}], "skipped": 2}, "'skipped' must be an integer from 0 to 1"),
    ],
)
def test_replies_are_checked_on_the_device(payload, fragment):
    sent = DeviceProtocol().request([STATE])
    with pytest.raises(ProtocolError) as info:
        DeviceProtocol().receive(raw(payload), sent)
    assert fragment in str(info.value)


def test_a_deferred_op_with_a_result_is_a_protocol_error():
    device = DeviceProtocol()
    device.defer(STEP)
    sent = device.request([STATE])
    with pytest.raises(ProtocolError, match=r"reply to op 0 \(step\): expected no result \(null\), got int"):
        device.receive(raw({"v": 1, "seq": 0, "results": [3, {}]}), sent)
