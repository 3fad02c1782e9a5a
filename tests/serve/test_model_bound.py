"""`serve --max-model-mb` / `--max-example-mb`: one device cannot make the server allocate what it asks for."""

from __future__ import annotations

import pytest
import torch

from lightning_split.graph.describe import ModelDescription
from lightning_split.runtime.placement import place_model
from lightning_split.transport import messages
from lightning_split.transport.client import RemoteServer
from lightning_split.transport.protocol import RemoteError
from tests.helpers import ServeProcess
from tests.models import DigitsMLP, digits

MODEL = "tests.models:DigitsMLP"


def hello(init_args: dict, batch: int = 32) -> messages.Hello:
    """A hello for a DigitsMLP(hidden=16) cut at ``l1``, claiming ``init_args`` and an example of ``batch`` rows."""
    torch.manual_seed(0)
    model = DigitsMLP(hidden=16)
    images = digits(32).tensors[0]
    plan = place_model(model, (images,), {}, cut="l1")
    fields = ModelDescription.of(MODEL, init_args, plan.traced, plan.example).to_wire()
    fields["example"] = {"args": [{"$tensor": ["float32", [batch, 1, 8, 8]]}], "kwargs": {}}
    state = {key: value.detach() for key, value in model.state_dict().items() if key.startswith("head.")}
    return messages.Hello(**fields, spec=plan.spec.to_json(), optimizers=[], state=state)


@pytest.fixture(scope="module")
def bounded_server():
    server = ServeProcess("--model", MODEL, "--max-model-mb", "1", "--max-example-mb", "1")
    yield server
    server.stop()


def test_a_model_over_max_model_mb_is_refused_before_it_is_allocated(bounded_server):
    remote = RemoteServer(bounded_server.url, retry_for=0)
    try:
        # 64 x 10**10 floats: 2.3 TiB, which this machine could never allocate; only the meta
        # device can size it, so the refusal proves nothing was allocated.
        with pytest.raises(RemoteError, match=r"over this server's limit of 1\.0 MiB.*serve --max-model-mb"):
            remote.call([hello({"hidden": 10**10})])
        with pytest.raises(RemoteError, match=r"--max-model-mb"):
            remote.call([hello({"hidden": 8192})])  # 2.3 MiB: just over
        (reply,) = remote.call([hello({"hidden": 16})])  # the same server still serves a model within the bound
        assert reply.session
    finally:
        remote.close()


def test_an_example_batch_over_max_example_mb_is_refused(bounded_server):
    remote = RemoteServer(bounded_server.url, retry_for=0)
    try:
        with pytest.raises(RemoteError, match=r"example batch .* 2\.0 MiB .* limit of 1\.0 MiB.*--max-example-mb"):
            remote.call([hello({"hidden": 16}, batch=2**13)])  # 8192 x 64 floats: 2 MiB of zeros to trace on
    finally:
        remote.close()


def test_the_default_bound_is_a_fraction_of_the_machine_memory():
    server = ServeProcess("--model", MODEL)
    remote = RemoteServer(server.url, retry_for=0)
    try:
        with pytest.raises(RemoteError, match=r"serve --max-model-mb"):
            remote.call([hello({"hidden": 10**10})])
    finally:
        remote.close()
        server.stop()
