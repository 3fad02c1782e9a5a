"""The typed messages: every op and reply round-trips through the wire, and every field's error names the field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_split.transport import messages, wire
from lightning_split.transport.messages import OPS, MappingReply, Message, Op, Reply
from lightning_split.transport.protocol import ProtocolError

SESSION = "0123456789abcdef" * 2
MODEL = {"model": "pkg.mod:Net", "init_args": {"width": 8}, "fingerprint": "abc", "example": {"args": [], "kwargs": {}}}

EXAMPLES: list[Message] = [
    messages.Hello(
        **MODEL,
        leaf_modules=["backbone"],
        graph=[["x", "placeholder"]],
        spec={"server_nodes": ["b"]},
        optimizers=[{"class": "SGD", "defaults": {"lr": 0.1}, "groups": []}],
        state={"b.weight": torch.ones(2, 2)},
    ),
    messages.Resume(session=SESSION),
    messages.Forward(
        id=3,
        values=[torch.ones(2, 3), 4, (torch.zeros(1), "x")],
        requires_grad=[True, False, False],
        training=True,
        grad=True,
        rng=torch.zeros(8, dtype=torch.uint8),
    ),
    messages.Backward(id=3, grads=[torch.ones(2, 3), None]),
    messages.Release(ids=[1, 2]),
    messages.ZeroGrad(optimizer=0, set_to_none=False),
    messages.GradNorms(optimizer=1, norm_type=2.0),
    messages.ScaleGrads(optimizer=0, coefficient=torch.tensor(0.5)),
    messages.ClipGradValue(optimizer=0, value=1.0),
    messages.Step(optimizer=0, hparams=[{"lr": 0.1, "betas": [0.9, 0.99]}]),
    messages.StateDict(),
    messages.OptimizerState(optimizer=0),
    messages.LoadOptimizerState(optimizer=0, state={"b.weight": {"step": torch.tensor(3.0)}}),
    messages.Profile(**MODEL, warmup=1, repeats=2, optimizers=[{"class": "SGD"}], calibrate=False),
    messages.Ping(payload=torch.zeros(4, dtype=torch.uint8), reply_bytes=16),
    messages.Close(),
    messages.HelloReply(device="cpu", rng_sync=True, session=SESSION, persistent=False),
    messages.ResumeReply(session=SESSION, last_seq=7, have_reply=False, durable=5),
    messages.ForwardReply(outputs=[torch.ones(2), 3], rng=None, compute_s=0.25),
    messages.BackwardReply(grads=[None, torch.ones(2)], compute_s=0.5),
    messages.GradNormsReply(norms={"b.weight": torch.tensor(1.5)}),
    messages.StateDictReply(state={"b.weight": torch.ones(2, 2)}),
    messages.OptimizerStateReply(state={"b.weight": {"momentum_buffer": torch.ones(2, 2), "step": 3}}),
    messages.ProfileReply(
        node_s={"a": 0.1, "b": 0.2},
        calibration={"scale": 1.0, "whole_s": None},
        optimizer_node_s={"b": 0.01},
        device="cpu",
        hardware="some CPU",
        measure_s=1.5,
    ),
    messages.PingReply(payload=torch.zeros(3, dtype=torch.uint8), hardware="some CPU", torch="2.0"),
    messages.FedJoin(group="digits", clients=3, client=1, mode="splitfed", round_steps=5, timeout=30.0),
    messages.FedWait(round=2, hold=False),
    messages.FedSubmit(round=2, samples=160, sealed=torch.arange(5, dtype=torch.uint8), state={}, loss=0.5),
    messages.FedJoinReply(joined=[0, 1], round=0),
    messages.FedWaitReply(
        ready=True,
        round=2,
        waiting_for=[],
        skipped=[2],
        sealed=torch.zeros(0, dtype=torch.uint8),
        state={"stem.0.weight": torch.ones(8, 1, 3, 3)},
        samples=480,
    ),
]
IDS = [type(example).__name__ for example in EXAMPLES]


def through_the_wire(value):
    return wire.decode(wire.encode({"value": value}))["value"]


def test_every_op_and_reply_has_an_example():
    kinds = {type(example) for example in EXAMPLES}
    assert set(OPS.values()) <= kinds
    assert {op.reply for op in OPS.values() if op.reply is not None} <= kinds


@pytest.mark.parametrize("example", EXAMPLES, ids=IDS)
def test_round_trip_through_the_wire(example: Message):
    received = type(example).from_wire(through_the_wire(example.to_wire()))
    assert received == example
    assert received is not example


@pytest.mark.parametrize("example", [e for e in EXAMPLES if isinstance(e, Op)], ids=lambda e: e.name)
def test_an_op_is_found_by_its_wire_name(example: Op):
    wire_form = example.to_wire()
    assert wire_form["op"] == example.name and OPS[example.name] is type(example)
    assert messages.op_from_wire(through_the_wire(wire_form)) == example


def test_the_wire_keys_are_the_protocols():
    forward = next(e for e in EXAMPLES if isinstance(e, messages.Forward))
    assert list(forward.to_wire()) == ["op", "id", "values", "requires_grad", "training", "grad", "rng"]
    norms = messages.GradNormsReply(norms={"w": torch.ones(1)})
    assert list(norms.to_wire()) == ["w"]  # a mapping result is the mapping itself, as before


def test_fields_holding_their_default_stay_off_the_wire():
    plain = messages.Profile(**MODEL, warmup=1, repeats=2)
    assert "optimizers" not in plain.to_wire() and "calibrate" not in plain.to_wire()
    assert "leaf_modules" not in plain.to_wire() and "graph" not in plain.to_wire()
    assert messages.Profile.from_wire(plain.to_wire()) == plain
    assert messages.Profile.from_wire(plain.to_wire()).calibrate is True
    changed = dataclasses.replace(plain, calibrate=False, optimizers=[{"class": "SGD"}])
    assert changed.to_wire()["calibrate"] is False and changed.to_wire()["optimizers"] == [{"class": "SGD"}]


def test_which_ops_are_deferred_and_which_are_unordered():
    assert {name for name, op in OPS.items() if op.deferrable} == {
        "zero_grad",
        "scale_grads",
        "clip_grad_value",
        "step",
        "release",
    }
    assert {name for name, op in OPS.items() if op.unordered} == {"ping", "profile", "resume"}
    assert {name for name, op in OPS.items() if op.reply is None} == {
        "zero_grad",
        "scale_grads",
        "clip_grad_value",
        "step",
        "release",
        "load_optimizer_state",
        "close",
        "fed_submit",
    }


def _fields(example: Message) -> list[str]:
    return [spec.name for spec in dataclasses.fields(example)]


def _with(example: Message, name: str, value) -> object:
    if isinstance(example, MappingReply):
        return value
    return {**example.to_wire(), name: value}


FIELDS = [(example, name) for example in EXAMPLES for name in _fields(example)]
FIELD_IDS = [f"{type(example).__name__}.{name}" for example, name in FIELDS]


@pytest.mark.parametrize(("example", "name"), FIELDS, ids=FIELD_IDS)
def test_a_wrong_type_is_refused_naming_the_field(example: Message, name: str):
    wrong = 1.5 if isinstance(getattr(example, name), str) else "wrong"
    with pytest.raises(ProtocolError) as info:
        type(example).from_wire(through_the_wire(_with(example, name, wrong)))
    assert info.value.field == name
    assert f"field {name!r} must be" in str(info.value)
    assert str(info.value).startswith(f"{type(example).label}: ")
    with pytest.raises(ProtocolError) as made:  # the same rule holds for a message made here
        dataclasses.replace(example, **{name: wrong})
    assert made.value.field == name


REQUIRED = [
    (example, spec.name)
    for example in EXAMPLES
    if not isinstance(example, MappingReply)
    for spec in dataclasses.fields(example)
    if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
]


@pytest.mark.parametrize(("example", "name"), REQUIRED, ids=[f"{type(e).__name__}.{n}" for e, n in REQUIRED])
def test_a_missing_field_is_refused_naming_it(example: Message, name: str):
    incomplete = {key: value for key, value in example.to_wire().items() if key != name}
    with pytest.raises(ProtocolError, match=f"missing field {name!r}") as info:
        type(example).from_wire(incomplete)
    assert info.value.field == name


@pytest.mark.parametrize("example", [e for e in EXAMPLES if not isinstance(e, MappingReply)], ids=lambda e: e.label)
def test_an_unknown_field_is_refused_naming_it(example: Message):
    with pytest.raises(ProtocolError, match="unexpected field") as info:
        type(example).from_wire({**example.to_wire(), "extra": 1})
    assert info.value.field == "extra"


def example_of(cls: type[Message], **changes) -> dict:
    """The fields of the example of ``cls``, with ``changes``, to make a message of."""
    (example,) = [e for e in EXAMPLES if type(e) is cls]
    return {**{spec.name: getattr(example, spec.name) for spec in dataclasses.fields(example)}, **changes}


@pytest.mark.parametrize(
    ("cls", "changes", "field", "fragment"),
    [
        (messages.Forward, {"id": True}, "id", "field 'id' must be int, got bool"),
        (messages.Forward, {"requires_grad": [1]}, "requires_grad", "item 0 must be bool, got int"),
        (messages.Release, {"ids": [1, None]}, "ids", "field 'ids' item 1 must be int, got null"),
        (messages.Backward, {"grads": [3]}, "grads", "item 0 must be tensor or null, got int"),
        (messages.Hello, {"state": {"w": 1}}, "state", "field 'state' entry 'w' must be tensor, got int"),
        (messages.StateDictReply, {"state": {3: torch.ones(1)}}, "state", "key 3 must be str"),
        (messages.Step, {"hparams": [[0.1]]}, "hparams", "item 0 must be dict, got list"),
        (messages.Resume, {"session": "../../etc/passwd"}, "session", "must be 32 lowercase hex digits"),
        (messages.HelloReply, {"session": "x"}, "session", "must be 32 lowercase hex digits"),
        (messages.ResumeReply, {"last_seq": 3, "durable": 4}, "durable", "must be at most last_seq (3), got 4"),
        (messages.ResumeReply, {"last_seq": None, "durable": 0}, "durable", "must be at most last_seq (None)"),
    ],
)
def test_rules_beyond_the_type_name_the_field(cls, changes, field, fragment):
    with pytest.raises(ProtocolError) as info:
        cls(**example_of(cls, **changes))
    assert info.value.field == field
    assert fragment in str(info.value)


def test_a_result_where_none_is_due_and_the_wrong_op_name_are_refused():
    with pytest.raises(ProtocolError, match=r"reply to step: expected no result \(null\), got dict"):
        messages.Step.reply_from_wire({})
    assert messages.Step.reply_from_wire(None) is None
    with pytest.raises(ProtocolError, match="expected op 'close', got 'ping'"):
        messages.Close.from_wire({"op": "ping"})
    with pytest.raises(ProtocolError, match=r"unknown op 'x'; known ops: backward, "):
        messages.op_from_wire({"op": "x"})


def test_equality_compares_tensors_by_value_dtype_and_shape():
    a = messages.ScaleGrads(optimizer=0, coefficient=torch.tensor(0.5))
    assert a == messages.ScaleGrads(optimizer=0, coefficient=torch.tensor(0.5))
    assert a != messages.ScaleGrads(optimizer=0, coefficient=torch.tensor(0.5, dtype=torch.float64))
    assert a != messages.ScaleGrads(optimizer=0, coefficient=torch.tensor([0.5]))
    assert a != messages.ClipGradValue(optimizer=0, value=0.5)
    assert isinstance(a, Op) and not isinstance(a, Reply)
