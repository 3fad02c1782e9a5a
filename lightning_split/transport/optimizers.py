"""Optimizers as they cross the wire: described on the device, rebuilt on the server.

The server mirrors each device optimizer on its own parameters, so the device describes it
(class name, constructor defaults, and per param group the state keys of its parameters and
its hyperparameters) and the server rebuilds it. Only ``torch.optim`` classes are ever
resolved, by name: nothing a client sends is imported or executed. This module is the one
owner of that description, for the session's ``hello``, its ``step`` ops and the
``profile`` op that times optimizer steps.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_split.transport.protocol import SessionError


def resolve_optimizer(name: str) -> type[torch.optim.Optimizer]:
    """Map an optimizer class name to a ``torch.optim`` class; nothing else is ever resolved."""
    short = name.rsplit(".", 1)[-1]
    cls = getattr(torch.optim, short, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
        raise SessionError(
            f"optimizer {name!r} is not a torch.optim optimizer; the server only rebuilds torch.optim classes "
            "(SGD, Adam, AdamW, ...), since it never runs code sent by a client"
        )
    if short == "LBFGS":
        raise SessionError("LBFGS re-evaluates the whole model inside step(); it cannot be split across machines")
    return cls


@dataclass
class OptimizerSpec:
    """One device optimizer as the server mirrors it.

    Attributes:
        class_name: ``torch.optim`` class name.
        defaults: the optimizer's constructor defaults (JSON values).
        groups: for each param group, the state keys of its parameters (all of them, device
            and server side, in order) and its hyperparameters.
    """

    class_name: str
    defaults: dict[str, Any]
    groups: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"class": self.class_name, "defaults": self.defaults, "groups": self.groups}

    def build(self, params_per_group: Sequence[Sequence[torch.Tensor]], where: str) -> torch.optim.Optimizer:
        """This optimizer (``torch.optim`` class, defaults, each group's hyperparameters) over the given tensors.

        ``params_per_group`` has one (possibly empty) list per group of the description;
        ``where`` completes the error message ("on the server").
        """
        cls = resolve_optimizer(self.class_name)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
        defaults = {k: hyperparameter_from_wire(v) for k, v in self.defaults.items() if k in accepted}
        groups = [
            {"params": list(params), **{k: hyperparameter_from_wire(v) for k, v in group["hparams"].items()}}
            for params, group in zip(params_per_group, self.groups)
        ]
        try:
            return cls(groups, **defaults)
        except (TypeError, ValueError) as exc:
            raise SessionError(f"cannot rebuild {self.class_name} {where}: {exc}") from exc

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OptimizerSpec:
        try:
            groups = [
                {"params": [str(p) for p in group["params"]], "hparams": dict(group["hparams"])}
                for group in data["groups"]
            ]
            return cls(str(data["class"]), dict(data["defaults"]), groups)
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionError(f"malformed optimizer description: {exc!r}") from exc


def wire_hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    """The wire-safe hyperparameters of a param group (numbers, flags, tuples, tensors)."""
    result = {}
    for key, value in group.items():
        if key == "params":
            continue
        if isinstance(value, bool | int | float | str | type(None)):
            result[key] = value
        elif isinstance(value, tuple | list) and all(isinstance(v, int | float) for v in value):
            result[key] = list(value)
        elif isinstance(value, torch.Tensor):
            result[key] = value.detach().cpu()
    return result


def is_mirrorable(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the server can rebuild ``optimizer``: its class is a ``torch.optim`` class itself."""
    cls = type(optimizer)
    return cls.__module__.startswith("torch.optim") and getattr(torch.optim, cls.__name__, None) is cls


def describe_optimizer(optimizer: torch.optim.Optimizer, key_of: Mapping[int, str]) -> dict[str, Any]:
    """``optimizer`` as the wire describes it: class name, defaults, each group's state keys and hyperparameters.

    ``key_of`` maps a parameter's ``id`` to its state key; a parameter without one is named
    ``<unnamed-i>``, which no side holds, so it is mirrored nowhere.
    """
    groups = []
    for group in optimizer.param_groups:
        keys = [key_of.get(id(p), f"<unnamed-{i}>") for i, p in enumerate(group["params"])]
        groups.append({"params": keys, "hparams": wire_hyperparameters(group)})
    return {"class": type(optimizer).__name__, "defaults": wire_hyperparameters(optimizer.defaults), "groups": groups}


def parameter_keys(module: nn.Module) -> dict[int, str]:
    """``id(parameter)`` to its first state key in ``module`` (a tied parameter keeps its first name)."""
    key_of: dict[int, str] = {}
    for key, param in module.named_parameters(remove_duplicate=False):
        key_of.setdefault(id(param), key)
    return key_of


def describe_optimizers(module: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> list[dict[str, Any]]:
    """The optimizers whose steps the ``profile`` op can time, described over ``module``'s state keys.

    Optimizers that are not ``torch.optim`` classes are left out with a warning: the server
    cannot rebuild them, so their step is not in the costs. (A training session refuses them
    instead: :meth:`lightning_split.runtime.device.SplitRuntime.open`.)
    """
    key_of = parameter_keys(module)
    described = []
    for optimizer in optimizers:
        if not is_mirrorable(optimizer):
            warnings.warn(
                f"lightning_split: {type(optimizer).__qualname__} is not a torch.optim class; "
                "its step is left out of the costs",
                stacklevel=2,
            )
            continue
        described.append(describe_optimizer(optimizer, key_of))
    return described


def hyperparameter_from_wire(value: Any) -> Any:
    """JSON lists stand for the tuples optimizers use (betas, etas, step_sizes)."""
    if isinstance(value, list):
        return tuple(hyperparameter_from_wire(v) for v in value)
    return value
