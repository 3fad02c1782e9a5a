import math
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_split.costs.estimate import (
    DEFAULT_DEVICE_GFLOPS,
    DEFAULT_SERVER_GFLOPS,
    estimate_profile,
    example_inputs_for,
    model_from_path,
)
from lightning_split.graph.capture import TraceError, graph_fingerprint, trace_module
from lightning_split.planning.profile import Link, Profile

LINK = Link.from_mbps(100, 100, rtt_ms=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Run torch single-threaded: on a busy 2-core machine, 2 OpenMP threads spin-wait for each
    other and a 0.1 s forward pass takes several seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def names(traced):
    return [info.name for info in traced.nodes]


# ---------------------------------------------------------------------------------------------
# Small models


class ResidualConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        h = F.relu(self.stem(x))
        left = self.left(h) + h  # residual
        both = torch.cat([left, self.right(h)], dim=1)  # concat
        return self.head(both)


class TupleDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(5, 6)

    def forward(self, pair):
        x, y = pair
        s = self.a(x) + self.b(y)
        return {"sum": s, "parts": (x, y), "mean": s.mean()}


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8, bias=False)

    def forward(self, x):
        return self.embed(x)


class Decoder(nn.Module):
    def __init__(self, shared):
        super().__init__()
        self.head = nn.Linear(8, 8, bias=False)
        self.head.weight = shared

    def forward(self, x):
        return self.head(x)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder(self.encoder.embed.weight)

    def forward(self, x):
        h = torch.tanh(self.encoder(x))
        return self.decoder(h) + F.linear(h, self.encoder.embed.weight)


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.fc(x)
        h.add_(1)
        g = F.relu(h, inplace=True)
        g = self.act(g * 2)
        return g + h


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -x


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.fc(x)) + x


class LitWithDynamicPart(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.body = nn.Sequential(Block(), DataDependent())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(self.encoder(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RootDynamic(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        if h.max() > 0:
            return h
        return -h


class Flagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x, return_features=False, mask=None, scale: int = 1):
        h = self.body(x) * scale
        if mask is not None:
            h = h * mask
        if return_features:
            return h
        return self.head(h)


class BNDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = self.drop(F.relu(self.bn(self.conv(x))))
        return self.fc(h.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------
# Graph capture


def test_residual_concat_dag():
    model = ResidualConcat()
    x = torch.randn(2, 3, 16, 16)
    traced = trace_module(model, (x,))
    assert names(traced) == ["x", "stem", "relu", "left", "add", "right", "cat", "head"]
    assert traced.node("add").inputs == ("left", "relu")
    assert traced.node("cat").inputs == ("add", "right")
    assert traced.node("right").inputs == ("relu",)
    assert traced.outputs == ["head"]
    assert traced.node("x").op == "placeholder"
    assert traced.node("stem").params == ("stem.weight", "stem.bias")
    assert traced.node("stem").param_bytes == (8 * 3 * 3 * 3 + 8) * 4
    assert traced.node("cat").out_meta == ("tensor", (2, 16, 16, 16), "torch.float32")
    assert traced.batch_size == 2
    torch.testing.assert_close(traced.graph_module(x), model(x))


def test_graph_module_shares_weights_with_the_model():
    model = ResidualConcat()
    traced = trace_module(model, (torch.randn(1, 3, 8, 8),))
    assert traced.graph_module.stem is model.stem
    assert traced.graph_module.get_parameter("head.weight") is model.head.weight


def test_tuple_input_and_dict_output():
    model = TupleDict()
    pair = (torch.randn(3, 4), torch.randn(3, 5))
    traced = trace_module(model, (pair,))
    placeholder = traced.node("pair")
    assert placeholder.out_bytes == (12 + 15) * 4
    assert placeholder.out_meta == (("tensor", (3, 4), "torch.float32"), ("tensor", (3, 5), "torch.float32"))
    assert traced.batch_size == 3
    assert set(traced.outputs) == {"add", "getitem", "getitem_1", "mean"}
    assert traced.node("mean").out_bytes == 4
    out = traced.graph_module(pair)
    assert set(out) == {"sum", "parts", "mean"}
    torch.testing.assert_close(out["sum"], model(pair)["sum"])
    assert traced.graph_args(pair)[0] is pair


def test_tied_weights_are_listed_under_every_consumer():
    model = Tied()
    traced = trace_module(model, (torch.randn(2, 8),))
    assert traced.node("encoder_embed").params == ("encoder.embed.weight",)
    assert traced.node("decoder_head").params == ("decoder.head.weight",)
    assert {"encoder.embed.weight", "decoder.head.weight"} <= set(model.state_dict())
    functional = next(info for info in traced.nodes if info.target == "torch._C._nn.linear")
    assert functional.params == ("encoder.embed.weight",)
    assert functional.param_bytes == 8 * 8 * 4
    assert all("encoder_embed_weight" not in info.inputs for info in traced.nodes)  # get_attr is not a cost node
    torch.testing.assert_close(traced.graph_module(torch.ones(2, 8)), model(torch.ones(2, 8)))


def test_in_place_ops_become_data_flow():
    model = InPlace()
    x = torch.randn(3, 4)
    x_before = x.clone()
    traced = trace_module(model, (x,))
    assert torch.equal(x, x_before), "the recording run must not mutate the caller's example batch"
    # every later reader of a mutated tensor now reads the in-place node
    assert traced.node("add_").inputs == ("fc",)
    assert traced.node("relu").inputs == ("add_",)
    assert traced.node("mul").inputs == ("relu",)
    assert traced.node("act").inputs == ("mul",)
    assert set(traced.node("add").inputs) == {"act", "relu"}
    torch.testing.assert_close(traced.graph_module(x.clone()), model(x.clone()))


def test_lightning_module_with_untraceable_submodule_becomes_auto_leaf():
    model = LitWithDynamicPart()
    x = torch.randn(5, 4)
    with pytest.warns(UserWarning, match=r"body\.1.*not fx-traceable|not fx-traceable.*body\.1"):
        traced = trace_module(model, (x,))
    assert list(traced.auto_leaves) == ["body.1"]
    assert "control flow" in traced.auto_leaves["body.1"]
    assert traced.leaf_modules == ("body.1",)
    leaf = traced.node("body_1")
    assert leaf.op == "call_module" and leaf.module_path == "body.1"
    assert leaf.params == ("body.1.fc.weight", "body.1.fc.bias")
    assert leaf.flops == 2 * 8 * 8 * 5
    # the traceable sibling was traced through, not made a leaf
    assert "body_0_fc" in names(traced)
    assert traced.node("relu").module_path == "body.0"
    torch.testing.assert_close(traced.graph_module(x), model(x))


def test_user_leaves_by_path_and_by_class():
    model = LitWithDynamicPart()
    x = torch.randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # body.1 is a leaf by request: no auto-leaf warning
        by_path = trace_module(model, (x,), leaf_modules=["body.0", "body.1"])
        by_class = trace_module(model, (x,), leaf_modules=[Block, DataDependent])
    for traced in (by_path, by_class):
        assert names(traced) == ["x", "encoder_0", "encoder_1", "body_0", "body_1", "head"]
        assert set(traced.leaf_modules) == {"body.0", "body.1"}
        assert traced.auto_leaves == {}
    assert by_path.fingerprint() == by_class.fingerprint()
    single = trace_module(model, (x,), leaf_modules="body")
    assert names(single) == ["x", "encoder_0", "encoder_1", "body", "head"]
    with pytest.raises(TraceError, match=r"body\.7"):
        trace_module(model, (x,), leaf_modules=["body.7"])


def test_untraceable_root_forward_is_an_error_naming_class_and_reason():
    with pytest.raises(TraceError) as info:
        trace_module(RootDynamic(), (torch.randn(2, 4),))
    message = str(info.value)
    assert "RootDynamic" in message
    assert "control flow" in message
    assert "leaf_modules" in message


def test_non_tensor_arguments_are_fixed_and_branch():
    model = Flagged()
    x = torch.randn(3, 4)
    plain = trace_module(model, (x,))
    features = trace_module(model, (x,), {"return_features": True, "scale": 2})
    assert plain.outputs == ["head"]
    assert features.outputs == ["mul"]
    assert features.concrete_args == {"return_features": True, "mask": None, "scale": 2}
    assert [i.name for i in features.nodes if i.op == "placeholder"] == ["x"]  # no placeholders for fixed values
    torch.testing.assert_close(features.graph_module(x), model(x, return_features=True, scale=2))
    assert features.graph_args(x, return_features=True, scale=2) == (x,)
    with pytest.raises(TraceError, match="return_features"):
        features.graph_args(x)
    masked = trace_module(model, (x,), {"mask": torch.ones(8)})
    assert [i.name for i in masked.nodes if i.op == "placeholder"] == ["x", "mask"]
    assert len({plain.fingerprint(), features.fingerprint(), masked.fingerprint()}) == 3


class Iterates(nn.Module):
    def forward(self, x):
        return torch.stack([row * 2 for row in x])


class UsesLen(nn.Module):
    def forward(self, x):
        return x[: len(x) // 2]


class VarArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.rows = Iterates()
        self.halve = UsesLen()

    def forward(self, *xs, scale=1.0, **extra):
        h = self.fc(xs[0]) + xs[1] * scale
        h = self.rows(h) + self.halve(torch.cat([h, h]))
        return h + extra["bias"]


def test_var_args_and_unsupported_calls():
    model = VarArgs()
    a, b, bias = torch.randn(3, 4), torch.randn(3, 4), torch.randn(4)
    with pytest.warns(UserWarning, match="not fx-traceable") as record:
        traced = trace_module(model, (a, b), {"bias": bias, "scale": 2.0, "mode": "fast"}, method="fx")
    assert len(record) == 1
    assert set(traced.auto_leaves) == {"rows", "halve"}
    assert "iterated" in traced.auto_leaves["rows"]
    assert "len" in traced.auto_leaves["halve"]
    assert [i.name for i in traced.nodes if i.op == "placeholder"] == ["xs_0", "xs_1", "bias"]
    assert traced.concrete_args == {"scale": 2.0, "mode": "fast"}
    args = traced.graph_args(a, b, scale=2.0, bias=bias, mode="fast")
    assert args == (a, b, bias)
    torch.testing.assert_close(traced.graph_module(*args), model(a, b, bias=bias, scale=2.0, mode="fast"))


def test_conv_out_bytes_and_linear_flops():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    traced = trace_module(conv, (torch.randn(2, 3, 16, 16),))
    assert traced.node("_0").out_bytes == 2 * 8 * 16 * 16 * 4 == 16384
    assert traced.nodes[0].op == "placeholder"
    assert traced.nodes[0].out_bytes == 2 * 3 * 16 * 16 * 4
    batch, n_in, n_out = 7, 12, 5
    linear = trace_module(nn.Sequential(nn.Linear(n_in, n_out)), (torch.randn(batch, n_in),))
    assert linear.node("_0").flops == 2 * n_in * n_out * batch
    assert linear.node("_0").out_bytes == batch * n_out * 4


def test_non_tensor_outputs_count_eight_bytes():
    class Shapes(nn.Module):
        def forward(self, x):
            return x.size(0), x.shape, x + 1

    traced = trace_module(Shapes(), (torch.randn(2, 3),))
    assert traced.node("size").out_meta == ("value", "int")
    assert traced.node("size").out_bytes == 8
    assert traced.node("getattr_1").out_bytes == 2 * 8  # a Size counts 8 bytes per dimension
    assert traced.node("add").out_bytes == 24


def test_fingerprint_depends_on_architecture_only():
    x = torch.randn(2, 3, 16, 16)
    first = trace_module(ResidualConcat(), (x,))
    second = trace_module(ResidualConcat(), (torch.randn(5, 3, 16, 16),))
    assert first.fingerprint() == second.fingerprint()
    assert first.fingerprint() == graph_fingerprint(second.graph_module)
    assert len(first.fingerprint()) == 64
    other = trace_module(InPlace(), (torch.randn(2, 4),))
    assert other.fingerprint() != first.fingerprint()
    wider = ResidualConcat()
    wider.head = nn.Conv2d(16, 6, 1)
    assert trace_module(wider, (x,)).fingerprint() != first.fingerprint()


@pytest.mark.slow  # a fresh interpreter importing torch
def test_fingerprint_is_stable_across_processes():
    import subprocess
    import sys

    code = (
        "import torch; from lightning_split.graph.capture import trace_module; "
        "from torch import nn; "
        "m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)); "
        "print(trace_module(m, (torch.randn(1, 3, 8, 8),)).fingerprint())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    here = trace_module(model, (torch.randn(1, 3, 8, 8),)).fingerprint()
    assert result.stdout.strip() == here


def test_recording_run_has_no_side_effects():
    model = BNDropout().train()
    model.bn.running_mean.normal_()
    model.drop.eval()  # a mixed-mode model must keep its per-module flags
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    x = torch.randn(4, 3, 8, 8)

    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    traced = trace_module(model, (x,))
    after_rng = torch.rand(5)

    assert torch.equal(expected, after_rng), "tracing consumed or reseeded the global RNG"
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
        assert value.dtype == after[key].dtype
    assert model.bn.num_batches_tracked.item() == 0
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert traced.graph_module.training
    assert all(p.grad is None for p in model.parameters())


def test_untraceable_examples_are_reported():
    with pytest.raises(TraceError, match="do not fit"):
        trace_module(ResidualConcat(), (torch.randn(1, 3, 8, 8), torch.randn(1)))


# ---------------------------------------------------------------------------------------------
# Estimated profiles


def test_estimate_profile_costs_and_fields():
    model = ResidualConcat()
    traced = trace_module(model, (torch.randn(2, 3, 16, 16),))
    profile = estimate_profile(traced, LINK, device_gflops=10, server_gflops=1000, backward_factor=2, min_node_s=0)
    assert isinstance(profile, Profile)
    assert profile.names == names(traced)
    assert profile.outputs == ["head"]
    x = profile.node("x")
    assert (x.kind, x.device_s, x.server_s) == ("input", 0.0, 0.0)
    stem = profile.node("stem")
    info = traced.node("stem")
    assert stem.kind == "op"
    assert stem.device_s == pytest.approx(3 * info.flops / 10e9)
    assert stem.server_s == pytest.approx(3 * info.flops / 1000e9)
    relu = profile.node("relu")  # no FLOPs counted: one per output element
    assert traced.node("relu").flops == 0
    assert relu.device_s == pytest.approx(3 * 2 * 8 * 16 * 16 / 10e9)
    assert stem.extra["module"] == "stem"
    assert stem.extra["op"] == "call_module"
    assert stem.extra["shape"] == [2, 8, 16, 16]
    assert stem.extra["param_bytes"] == info.param_bytes
    assert profile.extra["estimated"] is True
    assert profile.extra["batch_size"] == 2
    assert profile.extra["fingerprint"] == traced.fingerprint()
    assert Profile.from_json(profile.to_json()).to_json() == profile.to_json()
    floored = estimate_profile(traced, LINK, min_node_s=1e-3)
    assert all(node.device_s >= 1e-3 for node in floored.nodes if node.kind == "op")


def test_estimate_defaults_are_sane():
    assert 10 <= DEFAULT_DEVICE_GFLOPS <= 500 < DEFAULT_SERVER_GFLOPS
    traced = trace_module(Flagged(), (torch.randn(8192, 4),))  # big enough for the body to beat the floor
    profile = estimate_profile(traced, LINK)
    ops = [node for node in profile.nodes if node.kind == "op"]
    assert all(node.device_s >= node.server_s > 0 for node in ops)
    assert profile.node("body").device_s > profile.node("body").server_s
    with pytest.raises(ValueError, match="device_gflops"):
        estimate_profile(traced, LINK, device_gflops=0)


def test_model_from_path():
    assert model_from_path("torch.nn:Linear") is nn.Linear
    assert model_from_path("tests.graph.test_capture:ResidualConcat") is ResidualConcat
    with pytest.raises(ValueError, match="no_such_module"):
        model_from_path("no_such_module:Net")
    with pytest.raises(ValueError, match="NoSuchClass"):
        model_from_path("torch.nn:NoSuchClass")
    with pytest.raises(ValueError, match=r"package\.module:ClassName"):
        model_from_path("torch.nn.Linear")


def test_example_inputs_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    (first,) = example_inputs_for(None, [2, 3, 4])
    (second,) = example_inputs_for(None, (2, 3, 4))
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(first, second)
    assert first.shape == (2, 3, 4) and first.dtype == torch.float32
    (tokens,) = example_inputs_for(None, [2, 5], dtype=torch.long)
    assert tokens.dtype == torch.long
    lit = LitWithDynamicPart()
    lit.example_input_array = torch.zeros(1, 4)
    assert example_inputs_for(lit, None)[0] is lit.example_input_array
    with pytest.raises(ValueError, match="shape"):
        example_inputs_for(nn.Linear(2, 2), None)


# ---------------------------------------------------------------------------------------------
# The torchvision classification zoo

ZOO = [
    # name, constructor kwargs, input size, minimum node count
    ("resnet18", {}, 224, 60),
    ("resnet50", {}, 224, 150),
    ("resnet152", {}, 224, 450),
    ("densenet121", {}, 224, 400),
    ("densenet201", {}, 224, 650),
    ("googlenet", {"aux_logits": False, "init_weights": False}, 224, 150),
    ("inception_v3", {"aux_logits": False, "init_weights": False}, 299, 250),
    ("mobilenet_v2", {}, 224, 130),
    ("mobilenet_v3_small", {}, 224, 130),
    ("mobilenet_v3_large", {}, 224, 150),
    ("efficientnet_b0", {}, 224, 200),
    ("convnext_tiny", {}, 224, 150),
    ("regnet_y_400mf", {}, 224, 200),
    ("vit_b_16", {}, 224, 150),
    ("swin_t", {}, 224, 150),
]
# Each zoo case takes 0.2-1.5 s here (construction with weights=None, trace, recording run,
# reference FLOP count); the biggest are marked slow in case a loaded machine pushes them past ~5 s.
SLOW = {"resnet152", "densenet201", "vit_b_16", "swin_t"}


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "min_nodes"),
    [pytest.param(*spec, marks=[pytest.mark.slow] if spec[0] in SLOW else [], id=spec[0]) for spec in ZOO],
)
def test_torchvision_zoo_traces_and_estimates(name, kwargs, size, min_nodes):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    (x,) = example_inputs_for(model, (1, 3, size, size))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every zoo model traces without auto leaves
        traced = trace_module(model, (x,))
    assert traced.auto_leaves == {}
    assert len(traced.nodes) >= min_nodes
    assert traced.outputs
    profile = estimate_profile(traced, LINK)
    profile.validate()
    assert len(profile.nodes) == len(traced.nodes)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    whole = counter.get_total_flops()
    assert whole > 0
    assert math.isclose(sum(info.flops for info in traced.nodes), whole, rel_tol=0.10)
    output = traced.node(traced.outputs[0])
    assert output.out_meta == ("tensor", (1, 1000), "torch.float32")


def test_the_device_program_sends_a_cut_value_as_it_was_before_a_device_node_wrote_it():
    from lightning_split.graph.programs import device_program, make_spec

    class WritesAfterRead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            doubled = torch.relu(h) * 2
            kept = torch.sigmoid(input=h)  # a device node with no positional arguments
            h.add_(1)
            return doubled, kept, h

    model = WritesAfterRead()
    x = torch.randn(3, 4)
    traced = trace_module(model, (x,))
    gm = traced.graph_module
    spec = make_spec(gm, ["relu", "mul"])
    assert spec.cut == ("fc",) and "add_" not in spec.server_nodes
    cut_value = device_program(gm, spec)(x)[0]
    torch.testing.assert_close(cut_value, model.fc(x))  # not fc(x) + 1


class WritesAView(nn.Module):
    def __init__(self, others_read_it: bool):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.others_read_it = others_read_it

    def forward(self, x):
        h = self.fc(x)
        doubled = h * 2 if self.others_read_it else x
        view = h.view(3, 2, 2)[:, 0]
        F.relu(view, inplace=True)
        return doubled, view


def test_a_write_through_a_view_that_others_read_is_named_in_a_warning():
    from lightning_split.graph.recording import InPlaceViewWarning

    with pytest.warns(InPlaceViewWarning, match=r"node 'relu' writes 'getitem', a view of 'fc'.*out of place.*pin"):
        trace_module(WritesAView(others_read_it=True), (torch.randn(3, 4),))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InPlaceViewWarning)  # only the chain of views reads fc: nothing to warn of
        trace_module(WritesAView(others_read_it=False), (torch.randn(3, 4),))
