"""Does a traced model treat the samples of a batch independently? (What micro-batching needs.)

Cutting a batch into micro-batches changes nothing only if every sample's outputs depend on
that sample alone: then running the micro-batches one after another and concatenating equals
running the batch (up to float summation order). This module proves it for a traced graph
from a whitelist, node by node, or names what it cannot prove:

- modules of known per-sample types (convolutions, linear layers, activations, pooling,
  LayerNorm, GroupNorm, ...); BatchNorm (batch statistics), InstanceNorm with running stats
  and dropout (its random stream differs per micro-batch) are per-sample only in eval mode:
  they are reported as *mode-dependent* and checked again at every training forward;
- functions and tensor methods that are elementwise, or work along dimensions other than the
  batch dimension 0 (``cat``/``stack``/reductions/softmax along ``dim != 0``, ``flatten``
  from dimension 1, ``view``/``reshape`` that keep the batch dimension, transposes that leave
  it in place, indexing with ``[:, ...]``);
- the batch size itself (``x.size(0)``, ``x.shape[0]``) only as the first dimension of a
  ``view``/``reshape``/``expand``; a literal batch size there is refused (it would not fit a
  micro-batch).

Every value computed from the inputs must keep the batch as its first dimension. Anything
else (an unknown module or function, a leaf module of the user's, ``dim=0``) is a
:class:`Coupling` that names the node, its module and the reason.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lightning_split.graph import metadata

__all__ = [
    "Coupling",
    "PerSample",
    "analyse",
    "analyse_traced",
    "find_couplings",
    "mode_dependent_active",
    "traced_couplings",
]


@dataclass(frozen=True)
class Coupling:
    """A node that may mix the samples of a batch.

    Attributes:
        node: the fx node's name.
        where: what it is, for the message: ``"stem.1 (BatchNorm2d)"`` or ``"torch.cat at node cat"``.
        reason: why it is not provably per-sample.
        module: for a mode-dependent module (per-sample in eval mode), the module itself, so the
            check can be repeated cheaply at every training forward; ``None`` otherwise.
    """

    node: str
    where: str
    reason: str
    module: nn.Module | None = None

    def describe(self) -> str:
        return f"{self.where}: {self.reason}"


def mode_dependent_active(couplings: Iterable[Coupling]) -> list[Coupling]:
    """The couplings that hold now: every unconditional one, and the mode-dependent ones in training mode."""
    return [c for c in couplings if c.module is None or c.module.training]


# ----------------------------------------------------------------------------- modules

_PER_SAMPLE_MODULES: tuple[type, ...] = (
    nn.Identity, nn.Linear, nn.Bilinear, nn.LazyLinear,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm, nn.Embedding,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.ChannelShuffle, nn.Fold, nn.Unfold,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
    nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
)  # fmt: skip
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_DIM_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.GLU, nn.CosineSimilarity)


def _module_coupling(module: nn.Module) -> tuple[str | None, bool]:
    """(reason the module may mix samples or ``None``, whether that holds in training mode only)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if not module.track_running_stats:
            return "normalises with the statistics of the batch it sees, in training and in eval mode", False
        return (
            "normalises with the statistics of the batch it sees in training mode (each micro-batch has its own)",
            True,
        )
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        if module.track_running_stats:
            return "updates its running statistics once per batch it sees in training mode", True
        return None, False
    if isinstance(module, _DROPOUTS):
        if module.p == 0:
            return None, False
        return "draws its random mask from a stream that micro-batches consume in another order", True
    if isinstance(module, _DIM_MODULES):
        dim = getattr(module, "dim", None)
        return (None if dim not in (None, 0) else f"works along dim={dim}, the batch dimension"), False
    if isinstance(module, nn.Flatten):
        return (None if module.start_dim != 0 else "flattens the batch dimension (start_dim=0)"), False
    if isinstance(module, nn.Unflatten):
        return (None if module.dim != 0 else "unflattens the batch dimension (dim=0)"), False
    if isinstance(module, nn.MultiheadAttention):
        return (None if module.batch_first else "takes the batch as dimension 1 (batch_first=False)"), False
    if type(module) in _PER_SAMPLE_MODULES or isinstance(module, _PER_SAMPLE_MODULES):
        return None, False
    return "is not a module known to treat samples independently", False


# ----------------------------------------------------------------------------- functions


@dataclass(frozen=True)
class _Dims:
    """Where a function takes its dimension argument(s), and what it needs of them.

    ``need`` is ``"not0"`` (the dimension(s) must not include 0; ``None`` means all of them),
    ``"from1"`` (a start dimension of at least 1) or ``"first0"`` (a permutation keeping 0 first).
    """

    position: int
    keyword: str
    default: Any
    need: str = "not0"


_ELEMENTWISE = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
    operator.pow, operator.neg, operator.pos, operator.abs, operator.invert, operator.and_, operator.or_,
    operator.xor, operator.lt, operator.le, operator.gt, operator.ge, operator.eq, operator.ne,
    operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.pow, torch.neg, torch.abs,
    torch.exp, torch.log, torch.log1p, torch.expm1, torch.sqrt, torch.rsqrt, torch.square,
    torch.sin, torch.cos, torch.tanh, torch.sigmoid, torch.relu, torch.erf, torch.sign,
    torch.floor, torch.ceil, torch.round, torch.clamp, torch.clip, torch.where, torch.maximum,
    torch.minimum, torch.reciprocal, torch.lerp, torch.addcmul, torch.addcdiv, torch.masked_fill,
    torch.nan_to_num, torch.logical_and, torch.logical_or, torch.logical_not, torch.isnan,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.sigmoid, F.tanh,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.logsigmoid, F.threshold,
    F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
    F.conv_transpose3d, F.layer_norm, F.group_norm, F.rms_norm, F.local_response_norm, F.embedding,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.pad, F.interpolate, F.pixel_shuffle,
    F.pixel_unshuffle, F.one_hot, F.pairwise_distance,
}  # fmt: skip
_DIM_FUNCTIONS: dict[Any, _Dims] = {
    torch.cat: _Dims(1, "dim", 0),
    torch.concat: _Dims(1, "dim", 0),
    torch.stack: _Dims(1, "dim", 0),
    torch.flatten: _Dims(1, "start_dim", 0, "from1"),
    torch.transpose: _Dims(1, "dim0", None),
    torch.permute: _Dims(1, "dims", None, "first0"),
    torch.squeeze: _Dims(1, "dim", None),
    torch.unsqueeze: _Dims(1, "dim", None),
    torch.chunk: _Dims(2, "dim", 0),
    torch.split: _Dims(2, "dim", 0),
    torch.narrow: _Dims(1, "dim", None),
    torch.select: _Dims(1, "dim", None),
    torch.flip: _Dims(1, "dims", None),
    torch.roll: _Dims(2, "dims", None),
    torch.cumsum: _Dims(1, "dim", None),
    torch.softmax: _Dims(1, "dim", None),
    torch.log_softmax: _Dims(1, "dim", None),
    F.softmax: _Dims(1, "dim", None),
    F.log_softmax: _Dims(1, "dim", None),
    F.softmin: _Dims(1, "dim", None),
    F.glu: _Dims(1, "dim", -1),
    F.normalize: _Dims(2, "dim", 1),
    F.cosine_similarity: _Dims(2, "dim", 1),
}
for _reduction in (torch.sum, torch.mean, torch.amax, torch.amin, torch.prod, torch.logsumexp, torch.std,
                   torch.var, torch.argmax, torch.argmin, torch.max, torch.min, torch.norm, torch.all, torch.any,
                   torch.linalg.vector_norm):  # fmt: skip
    _DIM_FUNCTIONS[_reduction] = _Dims(2 if _reduction is torch.linalg.vector_norm else 1, "dim", None)
_DIM_FUNCTIONS[torch.norm] = _Dims(2, "dim", None)
_METHOD_DIMS: dict[str, _Dims] = {
    name: _Dims(fn.position, fn.keyword, fn.default, fn.need)
    for name, fn in {
        "flatten": _DIM_FUNCTIONS[torch.flatten],
        "transpose": _DIM_FUNCTIONS[torch.transpose],
        "squeeze": _DIM_FUNCTIONS[torch.squeeze],
        "unsqueeze": _DIM_FUNCTIONS[torch.unsqueeze],
        "chunk": _DIM_FUNCTIONS[torch.chunk],
        "split": _DIM_FUNCTIONS[torch.split],
        "narrow": _DIM_FUNCTIONS[torch.narrow],
        "select": _DIM_FUNCTIONS[torch.select],
        "flip": _DIM_FUNCTIONS[torch.flip],
        "roll": _DIM_FUNCTIONS[torch.roll],
        "cumsum": _DIM_FUNCTIONS[torch.cumsum],
        "softmax": _DIM_FUNCTIONS[torch.softmax],
        "log_softmax": _DIM_FUNCTIONS[torch.log_softmax],
        "sum": _DIM_FUNCTIONS[torch.sum],
        "mean": _DIM_FUNCTIONS[torch.mean],
        "amax": _DIM_FUNCTIONS[torch.amax],
        "amin": _DIM_FUNCTIONS[torch.amin],
        "prod": _DIM_FUNCTIONS[torch.prod],
        "logsumexp": _DIM_FUNCTIONS[torch.logsumexp],
        "std": _DIM_FUNCTIONS[torch.std],
        "var": _DIM_FUNCTIONS[torch.var],
        "argmax": _DIM_FUNCTIONS[torch.argmax],
        "argmin": _DIM_FUNCTIONS[torch.argmin],
        "max": _DIM_FUNCTIONS[torch.max],
        "min": _DIM_FUNCTIONS[torch.min],
        "norm": _DIM_FUNCTIONS[torch.norm],
        "all": _DIM_FUNCTIONS[torch.all],
        "any": _DIM_FUNCTIONS[torch.any],
    }.items()
}
_METHOD_DIMS["permute"] = _Dims(1, "dims", None, "first0")
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "true_divide", "pow", "neg", "abs", "exp", "log", "log1p", "sqrt", "rsqrt",
    "square", "sin", "cos", "tanh", "sigmoid", "relu", "erf", "sign", "floor", "ceil", "round", "clamp",
    "clip", "reciprocal", "masked_fill", "where", "nan_to_num", "lerp", "maximum", "minimum", "logical_not",
    "add_", "sub_", "mul_", "div_", "relu_", "clamp_", "sigmoid_", "tanh_", "masked_fill_",
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "long", "int", "bool", "to",
    "type", "type_as", "expand_as", "view_as", "reshape_as", "softplus",
}  # fmt: skip
_SHAPED_METHODS = {"view", "reshape", "expand"}  # take sizes: dim 0 must be -1 or the batch size, never a literal
_CONSTANT_ATTRIBUTES = {"ndim", "dtype", "device", "is_cuda", "layout"}


# ----------------------------------------------------------------------------- the analysis


_TENSOR, _BATCH_SIZE, _CONSTANT, _SHAPE = "tensor", "batch size", "constant", "shape"


class _Analysis:
    """One pass over the graph in topological order, classifying every value it computes."""

    def __init__(self, gm: fx.GraphModule, out_meta: Mapping[str, Any], batch_size: int) -> None:
        self.gm = gm
        self.out_meta = out_meta
        self.batch = batch_size
        self.kind: dict[fx.Node, str] = {}
        self.couplings: list[Coupling] = []

    def run(self) -> list[Coupling]:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                self._check_uses_of_batch_size(node)
                continue
            self.kind[node] = self._classify(node)
        return self.couplings

    # -- helpers -------------------------------------------------------------------------

    def _refuse(self, node: fx.Node, reason: str, module: nn.Module | None = None) -> str:
        self.couplings.append(Coupling(node.name, _where(self.gm, node), reason, module))
        return _TENSOR

    def _inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if n.op != "get_attr"]

    def _rank(self, node: Any) -> int | None:
        leaves = _tensor_shapes(self.out_meta.get(node.name)) if isinstance(node, fx.Node) else []
        return len(leaves[0]) if len(leaves) == 1 else None

    def _batch_first(self, node: fx.Node) -> bool:
        shapes = _tensor_shapes(self.out_meta.get(node.name))
        return all(len(shape) > 0 and shape[0] == self.batch for shape in shapes)

    # -- classification ------------------------------------------------------------------

    def _classify(self, node: fx.Node) -> str:
        if node.op == "placeholder":
            return _TENSOR if self._batch_first(node) and _tensor_shapes(self.out_meta.get(node.name)) else _CONSTANT
        if node.op == "get_attr":
            return _CONSTANT
        sources = [self.kind.get(n, _CONSTANT) for n in self._inputs(node)]
        if all(kind == _CONSTANT for kind in sources):
            return _CONSTANT
        shape_kind = self._shape_value(node)
        if shape_kind is not None:
            return shape_kind
        self._check_uses_of_batch_size(node)
        reason, module = self._rule(node)
        if reason is not None:
            return self._refuse(node, reason, module)
        if module is not None:  # mode-dependent: per-sample in eval mode only
            self.couplings.append(Coupling(node.name, _where(self.gm, node), self._mode_reason(module), module))
        if not self._batch_first(node):
            return self._refuse(node, "returns a value whose first dimension is not the batch")
        return _TENSOR

    def _mode_reason(self, module: nn.Module) -> str:
        reason, _ = _module_coupling(module)
        return reason or ""

    def _shape_value(self, node: fx.Node) -> str | None:
        """Classify reads of a shape: ``x.size(0)`` is the batch size, ``x.size(1)`` a constant."""
        source = node.args[0] if node.args else None
        if node.op == "call_method" and node.target == "size":
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if dim is None:
                return _SHAPE
            return _BATCH_SIZE if _normalise(dim, self._rank(source)) == 0 else _CONSTANT
        if node.op == "call_method" and node.target in ("dim", "ndimension"):
            return _CONSTANT
        if node.op == "call_function" and node.target is builtins.getattr:
            attribute = node.args[1]
            if attribute == "shape":
                return _SHAPE
            return _CONSTANT if attribute in _CONSTANT_ATTRIBUTES else None
        if node.op == "call_function" and node.target is operator.getitem and self.kind.get(source) == _SHAPE:
            index = node.args[1]
            if isinstance(index, int):
                return _BATCH_SIZE if index == 0 else _CONSTANT
            if isinstance(index, slice) and (index.start or 0) > 0:
                return _CONSTANT
            return _SHAPE
        return None

    def _check_uses_of_batch_size(self, node: fx.Node) -> None:
        """The batch size (or a whole shape) may only size dimension 0 of a view, reshape or expand."""
        sized = node.op == "call_method" and node.target in _SHAPED_METHODS
        for position, arg in enumerate(node.args):
            for source in _nodes_in(arg):
                kind = self.kind.get(source)
                if kind == _SHAPE and sized and position == 1 and len(node.args) == 2:
                    continue
                if kind == _BATCH_SIZE and sized and position == 1:
                    continue
                if kind in (_BATCH_SIZE, _SHAPE):
                    self._refuse(node, "uses the batch size as a number (a micro-batch has another)")
                    return
        for value in node.kwargs.values():
            if any(self.kind.get(source) in (_BATCH_SIZE, _SHAPE) for source in _nodes_in(value)):
                self._refuse(node, "uses the batch size as a number (a micro-batch has another)")
                return

    def _rule(self, node: fx.Node) -> tuple[str | None, nn.Module | None]:
        """(reason the node may mix samples or ``None``, the module when it holds in training mode only)."""
        if node.op == "call_module":
            module = self.gm.get_submodule(str(node.target))
            reason, mode_only = _module_coupling(module)
            if mode_only:
                return None, module
            return reason, None
        if node.op == "call_function":
            return self._function_rule(node), None
        if node.op == "call_method":
            return self._method_rule(node), None
        return f"is a {node.op} node", None

    def _function_rule(self, node: fx.Node) -> str | None:
        target = node.target
        if target is operator.getitem:
            return self._index_rule(node)
        if target in (torch.matmul, operator.matmul, torch.bmm, torch.mm):
            return self._matmul_rule(node)
        if target is F.dropout or target is torch.dropout or target is F.dropout2d or target is F.alpha_dropout:
            p = _argument(node, 1, "p", 0.5)
            training = _argument(node, 2, "training", True)
            return None if p == 0 or training is False else "applies dropout: its random stream differs per micro-batch"
        if target in _ELEMENTWISE:
            return None
        if target in _DIM_FUNCTIONS:
            return self._dims_rule(node, _DIM_FUNCTIONS[target], node.args[0] if node.args else None)
        if target is builtins.getattr:
            return f"reads .{node.args[1]} of a tensor computed from the batch"
        return "is not a function known to treat samples independently"

    def _method_rule(self, node: fx.Node) -> str | None:
        name = str(node.target)
        if name in _ELEMENTWISE_METHODS:
            return None
        if name in _METHOD_DIMS:
            return self._dims_rule(node, _METHOD_DIMS[name], node.args[0])
        if name in _SHAPED_METHODS:
            return self._sizes_rule(node)
        if name == "repeat":
            first = node.args[1] if len(node.args) > 1 else None
            return None if first == 1 else "repeats along the batch dimension"
        if name == "t":
            return "transposes the batch dimension away"
        return f"calls the tensor method .{name}(), not known to treat samples independently"

    def _dims_rule(self, node: fx.Node, rule: _Dims, source: Any) -> str | None:
        value = _argument(node, rule.position, rule.keyword, rule.default)
        if rule.keyword == "dim0":  # transpose: both dimensions
            value = [value, _argument(node, rule.position + 1, "dim1", None)]
        if rule.keyword == "dims" and rule.need != "first0" and node.op == "call_method" and len(node.args) > 2:
            value = list(node.args[1:])
        if rule.need == "first0" and node.op == "call_method" and len(node.args) > 2:
            value = list(node.args[1:])
        if isinstance(source, list | tuple):
            source = source[0] if source else None
        rank = self._rank(source) if isinstance(source, fx.Node) else None
        if rule.need == "first0":
            dims = list(value) if isinstance(value, list | tuple) else None
            ok = bool(dims) and _normalise(dims[0], rank) == 0
            return None if ok else "moves the batch dimension"
        if value is None:
            return "works over every dimension, the batch dimension included"
        dims = list(value) if isinstance(value, list | tuple) else [value]
        if any(isinstance(d, fx.Node) for d in dims):
            if node.target in (torch.max, torch.min, "max", "min") and len(dims) == 1:
                return None  # the elementwise overload: max(a, b)
            return "takes its dimension from a computed value"
        if node.target in (torch.unsqueeze, "unsqueeze") and rank is not None:
            rank += 1
        normalised = [_normalise(d, rank) for d in dims]
        if rule.need == "from1":
            return None if normalised[0] is not None and normalised[0] >= 1 else "flattens the batch dimension"
        if any(d is None for d in normalised) or 0 in normalised:
            return f"works along dimension {value!r}, the batch dimension"
        return None

    def _sizes_rule(self, node: fx.Node) -> str | None:
        sizes = list(node.args[1:])
        if len(sizes) == 1 and isinstance(sizes[0], list | tuple):
            sizes = list(sizes[0])
        if len(sizes) == 1 and isinstance(sizes[0], fx.Node) and self.kind.get(sizes[0]) == _SHAPE:
            return None  # x.view(y.shape) with y batch-first: the output check covers it
        if not sizes:
            return f"calls .{node.target}() without sizes"
        first = sizes[0]
        if isinstance(first, fx.Node):
            return None if self.kind.get(first) == _BATCH_SIZE else "sizes the batch dimension with a computed value"
        if first == -1:
            if any(isinstance(s, fx.Node) and self.kind.get(s) == _BATCH_SIZE for s in sizes[1:]):
                return "moves the batch size to another dimension"
            return None
        if first == self.batch:
            return f"hard-codes the batch size {first} (a micro-batch has fewer samples)"
        return f"sizes the batch dimension {first}"

    def _index_rule(self, node: fx.Node) -> str | None:
        source, index = node.args[0], node.args[1]
        meta = metadata.decode(self.out_meta.get(source.name)) if isinstance(source, fx.Node) else None
        if not isinstance(meta, metadata.TensorMeta):
            return None  # an element of a tuple or list of batch-first values
        first = index[0] if isinstance(index, tuple) and index else index
        if first is Ellipsis:
            rest = [i for i in index[1:] if i is not None] if isinstance(index, tuple) else []
            rank = len(meta.shape)
            return None if len(rest) < rank else "indexes the batch dimension"
        if isinstance(first, slice) and first == slice(None, None, None):
            return None
        return "indexes the batch dimension"

    def _matmul_rule(self, node: fx.Node) -> str | None:
        operands = [a for a in node.args[:2]]
        batched = [isinstance(a, fx.Node) and self.kind.get(a) == _TENSOR for a in operands]
        ranks = [self._rank(a) if isinstance(a, fx.Node) else None for a in operands]
        if batched == [True, False] or all(b and (r or 0) >= 3 for b, r in zip(batched, ranks)):
            return None
        return "multiplies across the batch dimension"


def _argument(node: fx.Node, position: int, keyword: str, default: Any) -> Any:
    if keyword in node.kwargs:
        return node.kwargs[keyword]
    if len(node.args) > position:
        return node.args[position]
    return default


def _normalise(dim: Any, rank: int | None) -> int | None:
    if not isinstance(dim, int) or isinstance(dim, bool):
        return None
    if dim >= 0:
        return dim
    return dim + rank if rank is not None else None


def _nodes_in(value: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    return found


def _tensor_shapes(meta: Any) -> list[tuple[int, ...]]:
    """The shapes of the tensor leaves of an ``out_meta`` structure."""
    return [leaf.shape for leaf in metadata.tensors(meta)] if meta is not None else []


def _where(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return f"{node.target} ({type(module).__name__})"
    if node.op == "call_method":
        return f".{node.target}() at node {node.name}"
    target = node.target
    name = getattr(target, "__name__", str(target))
    module = getattr(target, "__module__", None) or ""
    prefix = "torch." if module.startswith("torch") and module != "torch.nn.functional" else ""
    prefix = "F." if module == "torch.nn.functional" else prefix
    return f"{prefix}{name} at node {node.name}"


@dataclass(frozen=True)
class PerSample:
    """What :func:`analyse` found.

    Attributes:
        couplings: the nodes that may mix the samples (empty: the model is per-sample).
        batch_values: names of the nodes whose values are computed from the batch (the ones a
            micro-batched forward concatenates); every other value is the same for any batch.
    """

    couplings: tuple[Coupling, ...]
    batch_values: frozenset[str]


def analyse(gm: fx.GraphModule, out_meta: Mapping[str, Any], batch_size: int | None) -> PerSample:
    """Classify every node of ``gm``: which values follow the batch, which nodes may mix samples.

    Args:
        gm: the traced model.
        out_meta: each node's ``out_meta`` (``("tensor", shape, dtype)`` leaves) by node name.
        batch_size: the first dimension of the example the graph was traced with.

    Mode-dependent couplings (BatchNorm, dropout, ...) carry their module: see
    :func:`mode_dependent_active`. A model without a batch (``batch_size`` ``None``) is
    reported as one coupling.
    """
    if batch_size is None:
        return PerSample((Coupling("", "the model's inputs", "have no batch dimension to split"),), frozenset())
    analysis = _Analysis(gm, out_meta, batch_size)
    unique: dict[tuple[str, str], Coupling] = {}
    for coupling in analysis.run():
        unique.setdefault((coupling.node, coupling.reason), coupling)
    batch_values = frozenset(node.name for node, kind in analysis.kind.items() if kind == _TENSOR)
    return PerSample(tuple(unique.values()), batch_values)


def find_couplings(gm: fx.GraphModule, out_meta: Mapping[str, Any], batch_size: int | None) -> list[Coupling]:
    """The couplings of :func:`analyse`: every node that may mix the samples of a batch."""
    return list(analyse(gm, out_meta, batch_size).couplings)


def analyse_traced(traced: Any) -> PerSample:
    """:func:`analyse` of a :class:`~lightning_split.graph.capture.TracedModel`."""
    out_meta = {node.name: node.out_meta for node in traced.nodes}
    return analyse(traced.graph_module, out_meta, traced.batch_size)


def traced_couplings(traced: Any) -> list[Coupling]:
    """:func:`find_couplings` of a :class:`~lightning_split.graph.capture.TracedModel`."""
    return list(analyse_traced(traced).couplings)
