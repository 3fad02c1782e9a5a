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
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lightning_split.runtime.device import SplitRuntime

__all__ = ["MicroBatcher", "split_batch"]


def split_batch(args: Sequence[Any], micro_batches: int) -> list[tuple[Any, ...]]:
    """Cut ``args`` into at most ``micro_batches`` micro-batches along dimension 0.

    The batch size ``B`` is the first dimension of the first tensor argument; every tensor
    argument with ``B`` as its first dimension is cut with ``torch.tensor_split`` (the first
    ``B mod M`` pieces get one sample more), every other argument goes whole to each piece.
    With fewer samples than ``micro_batches`` there is one micro-batch per sample.
    """
    batch = next((a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)
    if batch is None or batch < 2 or micro_batches < 2:
        return [tuple(args)]
    pieces = min(micro_batches, batch)
    columns = [
        torch.tensor_split(a, pieces) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch else None
        for a in args
    ]
    return [tuple(arg if column is None else column[i] for arg, column in zip(args, columns)) for i in range(pieces)]


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
        cut_grads = ctx.runtime._backward_result(piece.call, piece.backward_reply.result())
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
        micro_batches: M >= 2.
        batch_values: names of the traced nodes whose values are computed from the batch (they
            are concatenated); every other returned value is the same in every micro-batch and
            is taken from the first.
        server_meta: ``out_meta`` of each server output, by name (``("tensor", shape, dtype)``).
    """

    def __init__(
        self,
        runtime: SplitRuntime,
        micro_batches: int,
        batch_values: Iterable[str],
        server_meta: Mapping[str, Any],
    ) -> None:
        if micro_batches < 2:
            raise ValueError(f"a MicroBatcher needs micro_batches >= 2, got {micro_batches}")
        self.runtime = runtime
        self.micro_batches = micro_batches
        self.batch_values = frozenset(batch_values)
        self.server_meta = dict(server_meta)
        self.tensor_outputs = [
            name for name in runtime.spec.server_outputs if _is_tensor_meta(self.server_meta.get(name))
        ]

    def forward(self, graph_args: Sequence[Any]) -> dict[str, Any] | None:
        """Named values (device and server) of the whole batch, or ``None`` when it is one micro-batch."""
        chunks = split_batch(graph_args, self.micro_batches)
        if len(chunks) < 2:
            return None
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
        _, shape, dtype = self.server_meta[name]
        shape = tuple(shape)
        if name in self.batch_values and shape:
            shape = (size, *shape[1:])
        return shape, getattr(torch, str(dtype).removeprefix("torch."))

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
    return isinstance(meta, tuple) and len(meta) == 3 and meta[0] == "tensor"


def _chunk_size(chunk: Sequence[Any]) -> int:
    return next((a.shape[0] for a in chunk if isinstance(a, torch.Tensor) and a.dim() > 0), 1)


def _first_device(values: Iterable[Any]) -> torch.device:
    return next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
