"""Mixed precision across the cut: the device's autocast on the server, a gradient scaler on both sides.

Lightning's precision plugins (``precision="bf16-mixed"``, ``"16-mixed"``) wrap the training
step in :func:`torch.autocast`. The device's part runs inside that region as it is; the server's
part must run under the same autocast dtype for the split to compute what the unsplit module
computes, so each ``forward`` op carries the dtype (:func:`autocast_dtype`) and the server opens
the same region on its own device.

With a gradient scaler (``16-mixed`` on a GPU) the loss is scaled, so the server's gradients are
scaled too. :func:`bridge_scaler` extends the scaler's ``unscale_`` to them: the server divides
its gradients by the same scale and reports whether any is infinite or NaN, which the scaler
counts as its own, so it skips the step (on both sides: the server steps only when the device's
optimizer does) and lowers the scale exactly as unsplit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["autocast_dtype", "bridge_scaler"]


def autocast_dtype(device: torch.device) -> str | None:
    """The autocast dtype active for ``device``'s type (``"bfloat16"``, ``"float16"``), or ``None``."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return str(torch.get_autocast_dtype(device.type)).removeprefix("torch.")


def bridge_scaler(
    scaler: Any, unscale_server: Callable[[torch.optim.Optimizer, torch.Tensor], bool]
) -> Callable[[], None]:
    """Make ``scaler.unscale_(optimizer)`` unscale the server's gradients too; returns the undo.

    ``unscale_server(optimizer, inv_scale)`` unscales them and says whether one was not finite.
    The scaler keeps its per-optimizer inf checks in ``_per_optimizer_states`` (private to
    ``torch.amp.GradScaler``, stable since torch 1.6), which ``step`` and ``update`` read.
    """
    original = scaler.unscale_

    def unscale_(optimizer: torch.optim.Optimizer) -> None:
        original(optimizer)
        inv_scale = scaler._scale.double().reciprocal().float()
        if unscale_server(optimizer, inv_scale):
            found = scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
            device = scaler._scale.device
            found[device] = found.get(device, torch.zeros(1, device=device)) + 1.0

    scaler.unscale_ = unscale_
    return lambda: scaler.__dict__.pop("unscale_", None)
