"""Mixed precision across the cut: which autocast the device's forward runs under.

Lightning's precision plugins (``precision="bf16-mixed"``, ``"16-mixed"``) wrap the training
step in :func:`torch.autocast`. The device's part runs inside that region as it is; the server's
part must run under the same autocast dtype for the split to compute what the unsplit module
computes, so each ``forward`` op carries the dtype (:func:`autocast_dtype`) and the server opens
the same region on its own device. A gradient scaler (``16-mixed`` on CUDA) would also have to
unscale and inf-check the server's gradients; that is not built, and :func:`check_precision`
refuses it before the first step instead of training wrongly.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["autocast_dtype", "check_precision"]


def autocast_dtype(device: torch.device) -> str | None:
    """The autocast dtype active for ``device``'s type (``"bfloat16"``, ``"float16"``), or ``None``."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return str(torch.get_autocast_dtype(device.type)).removeprefix("torch.")


def check_precision(precision_plugin: Any) -> None:
    """Refuse a precision plugin the split cannot reproduce exactly (one with a gradient scaler)."""
    if getattr(precision_plugin, "scaler", None) is not None:
        raise ValueError(
            "SplitStrategy does not support a gradient scaler yet (precision='16-mixed' on a GPU): the "
            "server's gradients would stay scaled. Use precision='bf16-mixed' (no scaler), or "
            "'16-mixed' on the CPU (autocast without a scaler), or 32-bit."
        )
