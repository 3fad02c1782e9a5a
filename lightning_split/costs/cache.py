"""Node costs kept on disk, keyed by everything they depend on, so a second start measures nothing.

:class:`ProfileCache` holds one JSON file per key under :func:`default_cache_dir`
(``$LIGHTNING_SPLIT_CACHE``, else the XDG cache directory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_split.graph.programs import example_skeleton

__all__ = ["CACHE_ENV", "CACHE_FORMAT", "CachedCosts", "ProfileCache", "default_cache_dir"]

#: The environment variable that names the cache directory.
CACHE_ENV = "LIGHTNING_SPLIT_CACHE"
#: Part of every key: entries of an older format are not found, and are measured again.
CACHE_FORMAT = "lightning-split-node-costs/2"


def default_cache_dir() -> Path:
    """``$LIGHTNING_SPLIT_CACHE``, else ``$XDG_CACHE_HOME/lightning-split``, else ``~/.cache/lightning-split``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "lightning-split"


@dataclass(frozen=True)
class CachedCosts:
    """Node costs read back from the cache, with how long measuring them took then."""

    node_s: dict[str, float]
    measure_s: float
    hardware: str
    path: Path
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class ProfileCache:
    """Node costs on disk, one JSON file per key, so a second start of the same setup measures nothing.

    A key (see :meth:`key`) names everything the costs depend on: the graph fingerprint,
    the shapes and dtypes of the batch, the side, the hardware, the torch version, the
    warm-up/repeat counts, whether the costs are calibrated, the optimizers whose steps
    they include and the number of micro-batches they were also timed for. Files are written
    to a temporary name and renamed into place, so a reader never sees half an entry; an
    unreadable or inconsistent entry is ignored with a warning (and overwritten by the next
    measurement).

    Args:
        directory: where entries live (default: :func:`default_cache_dir`).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()

    @staticmethod
    def key(
        fingerprint: str,
        example: Any,
        side: str,
        hardware: str,
        warmup: int,
        repeats: int,
        torch_version: str | None = None,
        model: str | None = None,
        calibrate: bool = True,
        optimizers: Sequence[Mapping[str, Any]] = (),
        micro_batches: int = 1,
    ) -> dict[str, Any]:
        """The fields an entry is keyed by (``example`` may hold tensors or their skeleton).

        ``micro_batches`` (the costs also hold the parts each of that many micro-batches pays)
        is a field only when it is above 1, so entries without it keep the keys they had.
        """
        extra = {"micro_batches": int(micro_batches)} if micro_batches > 1 else {}
        return {
            "format": CACHE_FORMAT,
            "fingerprint": fingerprint,
            "example": json.loads(json.dumps(example_skeleton(example), default=str)),
            "side": side,
            "hardware": hardware,
            "torch": torch_version or torch.__version__,
            "warmup": int(warmup),
            "repeats": int(repeats),
            "model": model,
            "calibrate": bool(calibrate),
            "optimizers": _jsonable(list(optimizers)),
            **extra,
        }

    def path(self, key: Mapping[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.directory / f"{key['side']}-{digest}.json"

    def get(self, key: Mapping[str, Any]) -> CachedCosts | None:
        """The entry for ``key``, or ``None`` when there is none or it is unusable (then with a warning)."""
        path = self.path(key)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            warnings.warn(f"lightning_split: cannot read the profile cache entry {path}: {exc}", stacklevel=2)
            return None
        try:
            data = json.loads(text)
            if data["key"] != json.loads(json.dumps(dict(key))):
                raise ValueError("its key differs from the one asked for")
            node_s = {str(name): float(value) for name, value in data["node_s"].items()}
            if not all(math.isfinite(value) and value >= 0 for value in node_s.values()):
                raise ValueError("a node cost is not finite seconds >= 0")
            hardware = str(data.get("hardware", key["hardware"]))
            return CachedCosts(node_s, float(data["measure_s"]), hardware, path, dict(data.get("details", {})))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            warnings.warn(
                f"lightning_split: ignoring the corrupted profile cache entry {path} "
                f"({type(exc).__name__}: {exc}); it will be measured again",
                stacklevel=2,
            )
            return None

    def put(
        self,
        key: Mapping[str, Any],
        node_s: Mapping[str, float],
        measure_s: float,
        hardware: str,
        details: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Store an entry atomically; returns its path, or ``None`` (with a warning) if it cannot be written.

        ``details`` (e.g. :meth:`TimedCosts.details`) is kept alongside and read back as it was.
        """
        path = self.path(key)
        entry = {
            "key": dict(key),
            "node_s": dict(node_s),
            "measure_s": measure_s,
            "hardware": hardware,
            "details": dict(details or {}),
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.directory, suffix=".tmp", delete=False) as handle:
                json.dump(entry, handle)
            os.replace(handle.name, path)
        except OSError as exc:
            warnings.warn(f"lightning_split: cannot write the profile cache entry {path}: {exc}", stacklevel=2)
            return None
        return path


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON (tensors, e.g. a tensor learning rate, become lists), for cache keys."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if isinstance(v, torch.Tensor) else str(v)))
