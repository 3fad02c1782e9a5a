"""How a batch is cut into micro-batches: along dimension 0, as ``torch.tensor_split`` cuts it.

One rule for the runtime, which runs the pieces (:mod:`lightning_split.runtime.microbatch`),
and for the node timer, which times the first piece (:mod:`lightning_split.costs.timing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["split_batch"]


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
