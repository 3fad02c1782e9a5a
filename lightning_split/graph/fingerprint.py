"""A traced graph's structural fingerprint: the key that says two traces are the same graph.

The device and the server each trace the model; the server accepts a session only when
both fingerprints agree, and measured costs are cached under it. It must therefore be stable
across processes and machines: no object addresses, no weights, no example data.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import fx

from lightning_split.graph.nodes import get_attr, readable_target

__all__ = ["graph_fingerprint"]


def graph_fingerprint(gm: fx.GraphModule) -> str:
    """sha256 hex of a graph's structure, stable across processes.

    Covers, per node, its op, name, readable target and its args/kwargs with nodes replaced
    by their names; for call_module nodes the module's class and ``extra_repr`` (so
    ``Linear(4, 8)`` and ``Linear(4, 16)`` differ), for get_attr nodes the tensor's shape and
    dtype. Weights, the example batch and object addresses do not enter it.
    """
    digest = hashlib.sha256()
    for node in gm.graph.nodes:
        entry: list[Any] = [node.op, node.name, readable_target(node), _structure(node.args), _structure(node.kwargs)]
        if node.op == "call_module":
            sub = gm.get_submodule(str(node.target))
            entry.append([f"{type(sub).__module__}.{type(sub).__qualname__}", sub.extra_repr()])
        elif node.op == "get_attr":
            value = get_attr(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                entry.append([list(value.shape), str(value.dtype)])
        digest.update(json.dumps(entry, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _structure(value: Any) -> Any:
    """JSON-able, address-free form of fx args: nodes by name, containers tagged, objects by type."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [_structure(item) for item in value]}
    if isinstance(value, dict):
        return {"dict": [[_structure(key), _structure(item)] for key, item in value.items()]}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, slice):
        return {"slice": [_structure(value.start), _structure(value.stop), _structure(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return {type(value).__name__: str(value)}
    if isinstance(value, torch.Tensor):
        return {"tensor": [list(value.shape), str(value.dtype)]}
    if callable(value) and hasattr(value, "__qualname__"):
        return {"callable": f"{getattr(value, '__module__', '')}.{value.__qualname__}"}
    return {"object": f"{type(value).__module__}.{type(value).__qualname__}"}
