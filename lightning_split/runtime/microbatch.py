"""Pipelined micro-batches: one training step's batch cut into M pieces that overlap on the way.

With ``micro_batches=M`` the device cuts the batch along dimension 0 into M micro-batches
(``torch.tensor_split``: sizes differ by at most one, the first ``B mod M`` get one sample
more). In the forward phase it runs the prefix of micro-batch ``i + 1`` while ``i`` is on the
wire and ``i - 1`` on the server: each micro-batch's cut values go out as soon as they exist,
as its own request, without waiting for the replies (the server answers a session's requests
in order). The user's ``training_step`` still sees one forward returning the whole batch's
outputs: the micro-batches' outputs are concatenated, so the loss and everything after it run
once, on the whole batch.

Autograd does the backward phase, in the order that makes it overlap too:

- each micro-batch's server part is one :class:`_PipelinedSuffix` node, created right after
  that micro-batch's prefix and *before* its reply exists (its outputs are filled in when the
  reply arrives, before anything reads them); so the graph interleaves prefix 0, suffix 0,
  prefix 1, suffix 1, ... and the engine, which runs the latest-created ready node first,
  backpropagates suffix ``M-1``, then prefix ``M-1`` while the server works on ``M-2``, and so on;
- one :class:`_Gather` node concatenates all outputs; its backward receives the whole output
  gradient at once and sends every micro-batch's share immediately, last micro-batch first
  (the order in which the suffix nodes will want the answers).

Exactness needs a model that treats samples independently
(:mod:`lightning_split.graph.persample`); the strategy checks before the first step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_split.graph import metadata
from lightning_split.graph.batches import split_batch
from lightning_split.graph.persample import Coupling, analyse_traced, mode_dependent_active
from lightning_split.planning.pipelined import pipelined_step_time
from lightning_split.runtime.errors import SplitConfigError
from lightning_split.runtime.precision import autocast_dtype

SplitRuntime = Any  # lightning_split.runtime.device.SplitRuntime, which imports this module
__all__ = ["MicroBatcher", "MicroBatching", "refusal", "split_batch"]


@dataclass(frozen=True)
class MicroBatching:
    """How a runtime cuts its forward calls into micro-batches.

    Attributes:
        micro_batches: M; 1 (or a batch of one sample) runs one request per forward, as without it.
        batch_values: names of the traced nodes whose values follow the batch (they are cut and
            concatenated); every other returned value is the same for any batch.
        out_meta: each traced node's ``out_meta``, by name (the server outputs' shapes come from it).
        watch: mode-dependent couplings (BatchNorm, dropout) checked at every training forward:
            in training mode they would make micro-batches differ from the batch.
    """

    micro_batches: int
    batch_values: frozenset[str] = frozenset()
    out_meta: Mapping[str, Any] = field(default_factory=dict)
    watch: tuple[Coupling, ...] = ()


def refusal(couplings: Sequence[Coupling], micro_batches: int, when: str = "") -> str:
    """The error for a model that micro-batching would change: what, where, and the fixes."""
    parts = "\n".join(f"  - {coupling.describe()}" for coupling in couplings)
    return (
        f"micro_batches={micro_batches} cuts every batch into micro-batches, which equals training on the whole "
        f"batch only if every layer treats the samples independently; these parts of the model do not"
        f"{' (' + when + ')' if when else ''}:\n{parts}\n"
        "Fixes: micro_batches=1 (no pipelining); per-sample layers instead (GroupNorm or LayerNorm for BatchNorm, "
        "dropout only with p=0 or in eval mode); or SplitStrategy(micro_batch_statistics=True) to let each "
        "micro-batch have its own batch statistics and random stream, as GPipe does (training then differs from "
        "training on whole batches)."
    )


@dataclass(eq=False)
class _Piece:
    """One micro-batch of one forward call: its call id, reply and (placeholder) server outputs."""

    call: Any
    size: int
    reply: Any = None
    outputs: tuple[torch.Tensor, ...] = ()
    results: list[Any] = field(default_factory=list)  # all server outputs, tensors included
    backward_reply: Any = None


class _PipelinedSuffix(torch.autograd.Function):
    """The server's part for one micro-batch: returns its outputs before they arrive.

    The outputs are fresh tensors of the traced shapes (batch dimension: the micro-batch's);
    :meth:`MicroBatcher.forward` fills them from the reply before anything reads them.
    Backward waits for the reply to the backward request :class:`_Gather` already sent.
    """

    @staticmethod
    def forward(ctx: Any, runtime: SplitRuntime, piece: _Piece, shapes: list[Any], values: list[Any], *tensors: Any):
        ctx.set_materialize_grads(False)
        ctx.runtime, ctx.piece = runtime, piece
        ctx.tensor_slots = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        outputs = tuple(torch.empty(shape, dtype=dtype, device=device) for shape, dtype in shapes)
        frozen = [t for t in outputs if not (t.is_floating_point() or t.is_complex())]
        if frozen:
            ctx.mark_non_differentiable(*frozen)
        return outputs

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        piece: _Piece = ctx.piece
        if piece.backward_reply is None:  # _Gather sent nothing: no gradient reached this micro-batch
            return (None, None, None, None, *(None for _ in ctx.tensor_slots), None)
        cut_grads = ctx.runtime._backward_result(piece.backward_reply.result())
        piece.backward_reply = None
        return (None, None, None, None, *(cut_grads[slot] for slot in ctx.tensor_slots), None)


class _Gather(torch.autograd.Function):
    """Concatenates the micro-batches' server outputs; its backward sends all output gradients at once."""

    @staticmethod
    def forward(ctx: Any, batcher: MicroBatcher, pieces: list[_Piece], *outputs: torch.Tensor):
        ctx.set_materialize_grads(False)
        ctx.batcher, ctx.pieces = batcher, pieces
        count = len(pieces[0].outputs)
        ctx.sizes = [[piece.outputs[k].shape[0] for piece in pieces] for k in range(count)]
        columns = [outputs[k::count] for k in range(count)]
        joined = tuple(torch.cat(column) for column in columns)
        frozen = [t for t in joined if not (t.is_floating_point() or t.is_complex())]
        if frozen:
            ctx.mark_non_differentiable(*frozen)
        return joined

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> Any:
        pieces: list[_Piece] = ctx.pieces
        shares = [
            list(grad.split(sizes)) if grad is not None else [None] * len(pieces)
            for grad, sizes in zip(grads, ctx.sizes)
        ]
        per_piece = [[share[i] for share in shares] for i in range(len(pieces))]
        ctx.batcher._send_backward(pieces, per_piece)
        return (None, None, *(g for i in range(len(pieces)) for g in per_piece[i]))


class MicroBatcher:
    """Runs the forward calls of one :class:`~lightning_split.runtime.device.SplitRuntime` in micro-batches.

    Args:
        runtime: the split runtime whose device program, server session and bookkeeping it uses.
        config: M (at least 2), which values follow the batch, the traced shapes.
    """

    def __init__(self, runtime: SplitRuntime, config: MicroBatching) -> None:
        if config.micro_batches < 2:
            raise ValueError(f"a MicroBatcher needs micro_batches >= 2, got {config.micro_batches}")
        self.runtime = runtime
        self.config = config
        self.micro_batches = config.micro_batches
        self.batch_values = config.batch_values
        self.server_meta = {name: config.out_meta.get(name) for name in runtime.spec.server_outputs}
        self.tensor_outputs = [name for name, meta in self.server_meta.items() if _is_tensor_meta(meta)]

    def coupled_now(self) -> list[Coupling]:
        """The watched modules that are in training mode (micro-batches would then differ from the batch)."""
        return mode_dependent_active(self.config.watch) if self.config.watch else []

    def forward(self, graph_args: Sequence[Any]) -> dict[str, Any] | None:
        """Named values (device and server) of the whole batch, or ``None`` when it is one micro-batch."""
        chunks = split_batch(graph_args, self.micro_batches)
        if len(chunks) < 2:
            return None
        if autocast_dtype(_first_device(chunks[0])) is not None:
            raise SplitConfigError(
                f"micro_batches={self.micro_batches} under mixed precision is not supported yet: the server's "
                "outputs would not have the traced dtypes the micro-batches' placeholders are made with; use "
                "micro_batches=1 with precision='bf16-mixed', or 32-bit precision with micro-batches"
            )
        runtime = self.runtime
        grad = torch.is_grad_enabled()
        runtime._flush_forgotten()
        n_cut = len(runtime.spec.cut)
        pieces: list[_Piece] = []
        device_values: list[dict[str, Any]] = []
        for chunk in chunks:
            outputs = runtime.program(*chunk)
            cut_values = list(outputs[:n_cut])
            device_values.append(dict(zip(runtime.device_returned, outputs[n_cut:])))
            piece = _Piece(runtime._new_call(), _chunk_size(chunk))
            piece.reply = runtime.remote.submit([runtime._forward_op(piece.call, cut_values, grad, rng=False)])
            if grad:
                tensors = [v for v in cut_values if isinstance(v, torch.Tensor)]
                shapes = [self._shape(name, piece.size) for name in self.tensor_outputs]
                piece.outputs = _PipelinedSuffix.apply(runtime, piece, shapes, cut_values, *tensors, runtime._anchor)
                runtime._track(piece.call)
            pieces.append(piece)
        for piece, chunk in zip(pieces, chunks):
            self._receive(piece, _first_device(chunk))
        return {**self._join_device(device_values), **self._join_server(pieces, grad)}

    def _shape(self, name: str, size: int) -> tuple[tuple[int, ...], torch.dtype]:
        meta = metadata.decode(self.server_meta[name])
        shape = meta.shape
        if name in self.batch_values and shape:
            shape = (size, *shape[1:])
        return shape, getattr(torch, meta.dtype.removeprefix("torch."))

    def _receive(self, piece: _Piece, device: torch.device) -> None:
        """Wait for a micro-batch's forward reply; fill its placeholders from it."""
        (result,) = piece.reply.result()
        piece.reply = None
        piece.results = self.runtime._forward_result(result, device)
        if not piece.outputs:
            return
        received = [value for value in piece.results if isinstance(value, torch.Tensor)]
        if len(received) != len(piece.outputs):
            raise RuntimeError(f"the server returned {len(received)} tensors, the trace promised {len(piece.outputs)}")
        with torch.no_grad():
            for name, placeholder, value in zip(self.tensor_outputs, piece.outputs, received):
                if placeholder.shape != value.shape or placeholder.dtype != value.dtype:
                    raise RuntimeError(
                        f"server output {name!r} of a micro-batch is {value.dtype} {tuple(value.shape)}, the trace "
                        f"promised {placeholder.dtype} {tuple(placeholder.shape)}: micro-batching needs outputs whose "
                        "shape follows the batch"
                    )
                placeholder.copy_(value)

    def _join_device(self, chunks: list[dict[str, Any]]) -> dict[str, Any]:
        return {name: self._join(name, [values[name] for values in chunks]) for name in chunks[0]}

    def _join_server(self, pieces: list[_Piece], grad: bool) -> dict[str, Any]:
        names = self.runtime.spec.server_outputs
        if grad:
            flat = [t for piece in pieces for t in piece.outputs]
            joined = iter(_Gather.apply(self, pieces, *flat) if flat else ())
            first = pieces[0].results
            return {
                name: next(joined) if isinstance(value, torch.Tensor) else value for name, value in zip(names, first)
            }
        return {name: self._join(name, [piece.results[k] for piece in pieces]) for k, name in enumerate(names)}

    def _join(self, name: str, values: list[Any]) -> Any:
        if name in self.batch_values and isinstance(values[0], torch.Tensor):
            return torch.cat(values)
        return values[0]

    def _send_backward(self, pieces: list[_Piece], grads: list[list[torch.Tensor | None]]) -> None:
        """Send every micro-batch's output gradients, the last micro-batch first."""
        for piece, piece_grads in reversed(list(zip(pieces, grads))):
            if all(g is None for g in piece_grads):
                continue
            full = iter(piece_grads)
            aligned = [next(full) if isinstance(value, torch.Tensor) else None for value in piece.results]
            piece.backward_reply = self.runtime.remote.submit([self.runtime._backward_op(piece.call, aligned)])


def _is_tensor_meta(meta: Any) -> bool:
    return isinstance(metadata.decode(meta), metadata.TensorMeta)


def _chunk_size(chunk: Sequence[Any]) -> int:
    return next((a.shape[0] for a in chunk if isinstance(a, torch.Tensor) and a.dim() > 0), 1)


def _first_device(values: Iterable[Any]) -> torch.device:
    return next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))


# ----------------------------------------------------------------------------- setting up


MAX_MICRO_BATCHES = 16
#: with ``micro_batches="auto"`` and measured costs, the nodes are also timed on one of this many micro-batches
#: (the fixed part each micro-batch pays is read off the line through the two sizes)
PROFILED_MICRO_BATCHES = 4


def check_micro_batches(value: Any) -> int | str:
    """``value`` if it is a valid ``micro_batches`` (an int from 1 to 16, or ``"auto"``), else ValueError."""
    if value == "auto" and isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MICRO_BATCHES:
        raise ValueError(f"micro_batches must be an integer from 1 to {MAX_MICRO_BATCHES} or 'auto', got {value!r}")
    return value


def micro_batching_for(traced: Any, micro_batches: int | str, statistics: bool = False) -> MicroBatching:
    """Check a traced model for ``micro_batches`` and describe how to cut its batches.

    A model that is not provably per-sample (:mod:`lightning_split.graph.persample`) gets
    ``micro_batches=1`` for ``"auto"``, and is refused for an explicit M > 1 unless
    ``statistics`` allows each micro-batch its own statistics. ``"auto"`` returns the largest M;
    :func:`choose_micro_batches` picks the one the cost model prefers.

    Raises:
        SplitConfigError: the model would train differently on micro-batches (names the
            modules and the fixes), or returns a value computed from the batch that does
            not keep the batch as its first dimension (it cannot be concatenated).
    """
    if micro_batches == 1:
        return MicroBatching(1)
    analysis = analyse_traced(traced)
    if micro_batches == "auto" and analysis.couplings and not statistics:
        return MicroBatching(1)
    limit = MAX_MICRO_BATCHES if micro_batches == "auto" else int(micro_batches)
    active = mode_dependent_active(analysis.couplings)
    if active and not statistics:
        raise SplitConfigError(refusal(active, limit))
    out_meta = {node.name: node.out_meta for node in traced.nodes}
    for name in traced.outputs:
        shapes = [leaf.shape for leaf in metadata.tensors(out_meta.get(name))]
        if name in analysis.batch_values and any(not shape or shape[0] != traced.batch_size for shape in shapes):
            raise SplitConfigError(
                f"micro_batches={limit}: the model returns {name!r} ({metadata.text(out_meta.get(name))}), computed "
                "from the batch without the batch as its first dimension, so the micro-batches' values cannot be "
                "concatenated; use micro_batches=1"
            )
    watch = () if statistics else tuple(c for c in analysis.couplings if c.module is not None)
    return MicroBatching(limit, analysis.batch_values, out_meta, watch)


def choose_micro_batches(profile: Any, server_nodes: Iterable[str], most: int = MAX_MICRO_BATCHES) -> tuple[int, float]:
    """(M, T_M): the number of micro-batches from 1 to ``most`` of least predicted step time for a placement.

    ``T_M`` is the pipelined step time of the cost model (``docs/cost-model.md``),
    :func:`lightning_split.planning.pipelined.pipelined_step_time`; ties go to the smaller M.
    """
    server = set(server_nodes)
    device = [node.name for node in profile.nodes if node.name not in server]
    if not server:
        return 1, pipelined_step_time(profile, device, 1).total
    times = {m: pipelined_step_time(profile, device, m).total for m in range(1, most + 1)}
    best = min(times, key=lambda m: (times[m], m))
    return best, times[best]
