"""A :class:`ServerSession` driven directly, with no sockets: typed ops in, typed replies out.

The device's half runs here too (the device program of the same placement), so one
forward, backward and optimizer step of a split DagNet can be compared with the same step
done locally with autograd.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lightning_split.graph.describe import ModelDescription
from lightning_split.graph.programs import device_program, used_state
from lightning_split.runtime.placement import place_model
from lightning_split.serve.app import SplitServer
from lightning_split.serve.host import ModelHost
from lightning_split.serve.session import SESSION_OPS, ServerSession
from lightning_split.transport import messages
from lightning_split.transport.optimizers import describe_optimizers, wire_hyperparameters
from lightning_split.transport.protocol import SessionError
from tests.models import DagNet, digits

LR = 0.1


def _host() -> ModelHost:
    return ModelHost(lambda init: DagNet(**dict(init)), "tests.models:DagNet")


def _split(model: DagNet, images: torch.Tensor):
    """A session on the server's own DagNet, cut at ``b``, mirroring an SGD optimizer; and the device program."""
    plan = place_model(model, (images,), {}, cut="b")
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    description = ModelDescription.of("tests.models:DagNet", dict(model.hparams), plan.traced, plan.example)
    hello = messages.Hello(
        **description.to_wire(),
        spec=plan.spec.to_json(),
        optimizers=describe_optimizers(model, [optimizer]),
        state={key: tensor.detach() for key, tensor in used_state(plan.graph_module, plan.spec.server_nodes).items()},
    )
    session = _host().open(hello)
    program = device_program(plan.graph_module, plan.spec)
    return session, plan, program, optimizer


def test_a_training_step_through_the_session_equals_local_autograd():
    torch.manual_seed(0)
    model = DagNet()
    local = copy.deepcopy(model)
    images, labels = digits(32).tensors

    session, plan, program, optimizer = _split(model, images)
    n_cut = len(plan.spec.cut)
    cut = list(program(*plan.traced.graph_args(images))[:n_cut])
    forward = messages.Forward(
        id=0,
        values=[value.detach() for value in cut],
        requires_grad=[True] * n_cut,
        training=True,
        grad=True,
        rng=None,
    )
    reply = session.handle(forward)
    assert isinstance(reply, messages.ForwardReply) and reply.compute_s > 0
    logits = reply.outputs[0].requires_grad_()
    F.cross_entropy(logits, labels).backward()
    back = session.handle(messages.Backward(id=0, grads=[logits.grad]))
    assert isinstance(back, messages.BackwardReply) and len(back.grads) == n_cut
    torch.autograd.backward(cut, back.grads)
    session.handle(messages.Step(optimizer=0, hparams=[wire_hyperparameters(g) for g in optimizer.param_groups]))
    optimizer.step()

    local_logits = local(images)
    torch.testing.assert_close(reply.outputs[0], local_logits.detach())
    F.cross_entropy(local_logits, labels).backward()
    local_grads = {key: p.grad.clone() for key, p in local.named_parameters()}
    torch.optim.SGD(local.parameters(), lr=LR).step()

    server_keys = set(session.params)
    assert server_keys and server_keys < set(local_grads)
    for key, param in model.named_parameters():  # the device's parameters took the step the device saw
        if key not in server_keys:
            torch.testing.assert_close(param.detach(), local.get_parameter(key).detach(), msg=key)
    for key in server_keys:  # the server's gradients and stepped parameters are the local ones
        torch.testing.assert_close(session.params[key].grad, local_grads[key], msg=key)
    state = session.handle(messages.StateDict())
    assert isinstance(state, messages.StateDictReply) and set(state.state) == set(session.state_refs)
    for key, tensor in state.state.items():
        torch.testing.assert_close(tensor, local.state_dict()[key], msg=key)
    norms = session.handle(messages.GradNorms(optimizer=0, norm_type=2.0))
    assert set(norms.norms) == server_keys
    torch.testing.assert_close(norms.norms["head.weight"], torch.linalg.vector_norm(local_grads["head.weight"]))


def _opened() -> tuple[ServerSession, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = DagNet()
    images = digits(8).tensors[0]
    session, plan, program, _ = _split(model, images)
    cut = [value.detach() for value in program(*plan.traced.graph_args(images))[: len(plan.spec.cut)]]
    return session, cut


def test_an_op_out_of_order_is_refused_with_a_named_error():
    session, cut = _opened()
    grads = [torch.ones(8, 10)]
    with pytest.raises(SessionError, match="backward for step 5, which has no pending forward"):
        session.handle(messages.Backward(id=5, grads=grads))
    forward = messages.Forward(id=5, values=cut, requires_grad=[True] * len(cut), training=True, grad=True, rng=None)
    session.handle(forward)
    session.handle(messages.Backward(id=5, grads=grads))
    with pytest.raises(SessionError, match=r"backward for step 5.*already backpropagated or released"):
        session.handle(messages.Backward(id=5, grads=grads))
    session.handle(forward)
    session.handle(messages.Release(ids=[5]))
    with pytest.raises(SessionError, match="backward for step 5"):
        session.handle(messages.Backward(id=5, grads=grads))
    with pytest.raises(SessionError, match="optimizer index 3 out of range"):
        session.handle(messages.ZeroGrad(optimizer=3, set_to_none=True))


def test_the_session_runs_only_session_ops():
    session, _ = _opened()
    with pytest.raises(SessionError, match="op 'ping' is not an op of the session"):
        session.handle(messages.Ping(payload=None, reply_bytes=0))
    assert messages.Hello not in SESSION_OPS and messages.Forward in SESSION_OPS


def test_the_server_has_a_handler_for_every_op():
    server = SplitServer(_host())
    try:
        assert set(server.handlers) == set(messages.OPS.values())
    finally:
        server.close()


class _ReturnsState(torch.nn.Module):
    """A server program whose outputs are a parameter and a computed tensor (a suffix may return its state)."""

    def __init__(self, param: torch.nn.Parameter) -> None:
        super().__init__()
        self.param = param

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.param, inputs[0] * 2


def test_replies_never_point_into_live_state():
    """A reply is kept for a retry as the frame that points into its tensors: state must come as copies."""
    torch.manual_seed(0)
    model = DagNet()
    images, _ = digits(8).tensors
    session, plan, program, _ = _split(model, images)
    cut = [value.detach() for value in program(*plan.traced.graph_args(images))[: len(plan.spec.cut)]]
    param = session.params["head.weight"]

    state = session.handle(messages.StateDict()).state
    assert torch.equal(state["head.weight"], param)
    assert state["head.weight"].untyped_storage().data_ptr() != param.untyped_storage().data_ptr()

    session.program = _ReturnsState(param)
    forward = messages.Forward(id=1, values=cut, requires_grad=[False] * len(cut), training=False, grad=False, rng=None)
    returned, computed = session.handle(forward).outputs
    assert torch.equal(returned, param)
    assert returned.untyped_storage().data_ptr() != param.untyped_storage().data_ptr()  # a copy of the parameter
    assert torch.equal(computed, cut[0] * 2)
