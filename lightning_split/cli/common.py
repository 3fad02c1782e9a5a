"""What the subcommands share: the one-line user error, importing and building the user's model, tokens."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from lightning_split.planning.profile import DEFAULT_LINK
from lightning_split.planning.units import mbit_per_s

TOKEN_ENV = "LIGHTNING_SPLIT_TOKEN"


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


DEFAULT_UPLINK_MBPS = mbit_per_s(DEFAULT_LINK.uplink_bytes_per_s)


DEFAULT_RTT_MS = DEFAULT_LINK.rtt_s * 1e3


def import_model_factory(spec: str) -> Any:
    """The class named by ``pkg.module:Class``, or a function building the model (``torchvision.models:resnet18``)."""
    try:
        return import_model(spec)
    except CommandError:
        # model_from_path accepts classes only; by now the module is imported if it exists.
        module_name, _, attr_path = spec.partition(":")
        obj: Any = sys.modules.get(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part, None)
        if obj is None or not callable(obj) or not attr_path:
            raise
        return obj


def input_shape(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if not shape or any(size <= 0 for size in shape):
        raise CommandError(
            f"--input-shape must be positive integers separated by commas, e.g. 32,3,32,32; got {text!r}"
        )
    return shape


def one_line(text: str) -> str:
    return " ".join(text.split())


def build_model(spec: str, init_args_text: str | None) -> tuple[Any, dict[str, Any]]:
    """Import ``pkg.module:Class`` and instantiate it with the ``--init-args`` JSON object (returned too)."""
    import torch

    factory = import_model_factory(spec)
    init_args = json_object(init_args_text, "--init-args") if init_args_text else {}
    try:
        model = factory(**init_args)
    except Exception as exc:  # the user's constructor can raise anything
        raise CommandError(f"cannot build {spec}: {type(exc).__name__}: {one_line(str(exc))}") from exc
    if not isinstance(model, torch.nn.Module):
        raise CommandError(f"{spec} built a {type(model).__name__}, not a torch.nn.Module")
    return model, init_args


def read_token(path: str | None) -> str | None:
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read the token file {path}: {exc.strerror}") from exc
        if not token:
            raise CommandError(f"the token file {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def import_model(spec: str) -> Any:
    from lightning_split.costs.estimate import model_from_path

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return model_from_path(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CommandError(str(exc)) from exc


def json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CommandError(f"{what} must be a JSON object")
    return value
