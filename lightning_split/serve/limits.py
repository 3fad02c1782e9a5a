"""What one device may make the server allocate: the model's size, the shapes it traces on.

``serve`` builds its copy of the model with constructor arguments a device sends
(``init_args``), and traces it on zero tensors of shapes the device names. Without a bound,
one device could ask for a model or a batch just under the machine's memory and take the
server down for everyone. :class:`ModelLimits` bounds both: the model is first built on the
``meta`` device (shapes only, nothing allocated) and refused when its parameters and buffers
exceed ``max_model_bytes``; the example batch is refused when its tensors exceed
``max_example_bytes``. Each refusal names the limit and the ``serve`` flag that sets it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_split.transport.protocol import SessionError

__all__ = ["DEFAULT_MODEL_FRACTION", "ModelLimits", "default_max_model_bytes", "example_bytes", "model_bytes"]

#: the share of the server's memory one model copy may take by default (a session also holds
#: gradients and optimizer state, and several sessions share the server).
DEFAULT_MODEL_FRACTION = 0.25
_MIB = 2**20


def default_max_model_bytes(device: str | torch.device = "cpu") -> int:
    """:data:`DEFAULT_MODEL_FRACTION` of the memory suffixes run in (RAM, or the GPU's memory)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * DEFAULT_MODEL_FRACTION)


def model_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each shared tensor once); works on ``meta`` modules."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen.setdefault(id(tensor), tensor.numel() * tensor.element_size())
    return sum(seen.values())


def example_bytes(skeleton: Any) -> int:
    """Bytes the zero tensors of an example skeleton (``{"$tensor": [dtype, shape]}`` leaves) would take.

    A malformed descriptor counts as nothing here: building the tensors refuses it.
    """
    if isinstance(skeleton, dict) and set(skeleton) == {"$tensor"}:
        try:
            dtype_name, shape = skeleton["$tensor"]
            dtype = getattr(torch, str(dtype_name))
            sizes = [int(size) for size in shape]
        except (TypeError, ValueError, AttributeError):
            return 0
        if not isinstance(dtype, torch.dtype) or any(size < 0 for size in sizes):
            return 0
        return math.prod(sizes) * torch.empty((), dtype=dtype).element_size()
    if isinstance(skeleton, dict):
        return sum(example_bytes(value) for value in skeleton.values())
    if isinstance(skeleton, list | tuple):
        return sum(example_bytes(value) for value in skeleton)
    return 0


@dataclass(frozen=True)
class ModelLimits:
    """The largest model and example batch a device may make the server build.

    Attributes:
        max_model_bytes: parameters and buffers of one model copy (``None``: no bound, as for
            the embedded server, which shares the user's own process).
        max_example_bytes: the tensors of the example batch a ``hello`` or ``profile`` asks
            the server to trace on (``None``: no bound).
    """

    max_model_bytes: int | None = None
    max_example_bytes: int | None = None

    def check_model(self, factory: Callable[[Mapping[str, Any]], nn.Module], init_args: Mapping[str, Any]) -> None:
        """Build the model on the ``meta`` device and refuse it when it is over :attr:`max_model_bytes`.

        Raises:
            SessionError: the model is too large, or cannot be built even on ``meta``.
        """
        if self.max_model_bytes is None:
            return
        try:
            with torch.device("meta"):
                size = model_bytes(factory(init_args))
        except Exception as exc:
            raise SessionError(
                f"cannot build the model on the meta device to check its size before allocating it "
                f"({type(exc).__name__}: {exc}); the server refuses models it cannot size"
            ) from exc
        if size > self.max_model_bytes:
            raise SessionError(
                f"the model asked for has {size / _MIB:,.1f} MiB of parameters and buffers, over this server's limit "
                f"of {self.max_model_bytes / _MIB:,.1f} MiB per model copy: use smaller init arguments, or start the "
                "server with a larger `serve --max-model-mb`"
            )

    def check_example(self, skeleton: Any) -> None:
        """Refuse an example batch whose tensors are over :attr:`max_example_bytes`.

        Raises:
            SessionError: the example is too large.
        """
        if self.max_example_bytes is None:
            return
        size = example_bytes(skeleton)
        if size > self.max_example_bytes:
            raise SessionError(
                f"the example batch to trace on has {size / _MIB:,.1f} MiB of tensors, over this server's limit of "
                f"{self.max_example_bytes / _MIB:,.1f} MiB: trace on a smaller batch, or start the server with a "
                "larger `serve --max-example-mb`"
            )
