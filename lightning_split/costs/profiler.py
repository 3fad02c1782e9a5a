"""Node costs of both sides, from the cache or by measuring, and how long getting them took.

:class:`Profiler` times this machine's side in process
(:func:`~lightning_split.costs.timing.time_node_costs`) and asks the server for its side with
the protocol's ``profile`` op (the server times its own copy of the model on zero tensors of
the device's shapes); both go through a :class:`~lightning_split.costs.cache.ProfileCache`
when it is given one. Each side's result is a :class:`NodeCosts`, which renders itself for
logs and for a profile's extra fields.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lightning_split.costs.cache import ProfileCache
from lightning_split.costs.linkprobe import ping_op
from lightning_split.costs.timing import hardware_name, normalised_device, time_node_costs
from lightning_split.graph.capture import TracedModel
from lightning_split.graph.describe import ModelDescription, example_of
from lightning_split.transport import messages

if TYPE_CHECKING:
    from lightning_split.transport.client import RemoteServer

__all__ = ["NodeCosts", "Profiler", "model_fields"]


@dataclass(frozen=True)
class NodeCosts:
    """Node costs of one side and where they came from.

    Attributes:
        node_s: forward+backward seconds per node.
        side: ``"device"`` or ``"server"``.
        hardware: what they were measured on.
        wall_s: seconds this call took (measuring, or reading the cache).
        measure_s: seconds measuring took when they were measured.
        cached: whether they came from the cache.
        details: how the costs were calibrated (:meth:`TimedCosts.details`; empty if unknown).
        forward_s: each node's forward share of ``node_s`` (timed with ``micro_batches`` > 1, else empty).
        fixed_s: the part of each node's cost that every micro-batch pays (the same).
    """

    node_s: dict[str, float]
    side: str
    hardware: str
    wall_s: float
    measure_s: float
    cached: bool
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    forward_s: dict[str, float] = dataclasses.field(default_factory=dict)
    fixed_s: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_cache(cls, hit: Any, side: str, wall_s: float) -> NodeCosts:
        """The costs of a cache entry (its ``details`` hold the per-node forward shares and fixed parts)."""
        details = dict(hit.details)
        forward_s, fixed_s = (_seconds_by_node(details.pop(name, {})) for name in _PER_NODE)
        return cls(hit.node_s, side, hit.hardware, wall_s, hit.measure_s, True, details, forward_s, fixed_s)

    def cache_details(self) -> dict[str, Any]:
        """What a cache entry keeps beside ``node_s``: the calibration and the per-node parts."""
        return {**self.details, "forward_s": self.forward_s, "fixed_s": self.fixed_s}

    def extras(self) -> dict[str, Any]:
        """Profile extras for this side: ``device_scale``, ``device_raw_sum_s``, ``device_whole_s``, ... ."""
        return {f"{self.side}_{name}": value for name, value in self.details.items()}

    def describe(self) -> str:
        """One line for logs: how many nodes, on what, how long, cached or not."""
        how = f"from the cache in {self.wall_s:.3f} s (measuring took {self.measure_s:.2f} s)"
        if not self.cached:
            how = f"measured in {self.wall_s:.2f} s"
        total = sum(self.node_s.values())
        text = f"{self.side} costs of {len(self.node_s)} nodes on {self.hardware}: {total * 1e3:.1f} ms/step, {how}"
        if self.details.get("whole_s") is not None:
            text += (
                f"; calibrated x{self.details['scale']:.3f} (nodes one by one {self.details['raw_sum_s'] * 1e3:.1f} ms,"
                f" whole pass {self.details['whole_s'] * 1e3:.1f} ms)"
            )
        if self.details.get("optimizer_s"):
            text += f"; optimizer steps {self.details['optimizer_s'] * 1e3:.1f} ms"
        return text


class Profiler:
    """Produces node costs for the device and the server, from the cache when it has them.

    Args:
        cache: where costs are kept (``None``: always measure, store nothing).
        warmup, repeats: per node, untimed and timed runs (see
            :func:`~lightning_split.costs.timing.time_node_costs`).
        device: this side's torch device.
        calibrate: scale node costs to whole forward+backward passes, on both sides (see
            :func:`~lightning_split.costs.timing.time_node_costs`; on by default).
        micro_batches: ``M`` > 1: also time, on both sides, each node's forward share and its
            cost on one of ``M`` micro-batches, for the pipelined step's cost model (twice the
            measuring; 1: the batch only).
    """

    def __init__(
        self,
        cache: ProfileCache | None = None,
        warmup: int = 2,
        repeats: int = 5,
        device: str | torch.device = "cpu",
        calibrate: bool = True,
        micro_batches: int = 1,
    ) -> None:
        if not (isinstance(micro_batches, int) and not isinstance(micro_batches, bool) and micro_batches >= 1):
            raise ValueError(f"micro_batches must be an integer >= 1, got {micro_batches!r}")
        self.cache = cache
        self.warmup = warmup
        self.repeats = repeats
        self.device = torch.device(device)
        self.calibrate = calibrate
        self.micro_batches = micro_batches

    def device_costs(
        self,
        traced: TracedModel,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None = None,
        optimizers: Sequence[Mapping[str, Any]] = (),
    ) -> NodeCosts:
        """This machine's costs for ``traced`` on the batch ``args``/``kwargs``, with steps of ``optimizers``.

        ``optimizers`` are descriptions as
        :func:`~lightning_split.transport.optimizers.describe_optimizers` makes them.
        """
        started = time.perf_counter()
        hardware = hardware_name(normalised_device(self.device))
        example = {"args": list(args), "kwargs": dict(kwargs or {})}
        key = ProfileCache.key(
            traced.fingerprint(),
            example,
            "device",
            hardware,
            self.warmup,
            self.repeats,
            calibrate=self.calibrate,
            optimizers=optimizers,
            **self._key_extra(),
        )
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and _covers(hit.node_s, traced):
            return NodeCosts.from_cache(hit, "device", time.perf_counter() - started)
        timed = time_node_costs(
            traced,
            args,
            kwargs,
            self.device,
            self.warmup,
            self.repeats,
            calibrate=self.calibrate,
            optimizers=optimizers,
            micro_batches=self.micro_batches,
        )
        measure_s = time.perf_counter() - started
        details = timed.details()
        costs = NodeCosts(
            timed.node_s, "device", hardware, measure_s, measure_s, False, details, timed.forward_s, timed.fixed_s
        )
        if self.cache is not None:
            self.cache.put(key, timed.node_s, measure_s, hardware, costs.cache_details())
        return costs

    def _key_extra(self) -> dict[str, Any]:
        """Cache-key fields beyond the defaults (so entries made without them keep their keys)."""
        return {"micro_batches": self.micro_batches} if self.micro_batches > 1 else {}

    def server_costs(
        self,
        remote: RemoteServer,
        traced: TracedModel,
        description: ModelDescription | Mapping[str, Any],
        optimizers: Sequence[Mapping[str, Any]] = (),
    ) -> NodeCosts:
        """The server's costs, measured by the server on its own copy of the model (the ``profile`` op).

        ``description`` says how the server rebuilds and checks the model: a
        :class:`~lightning_split.graph.describe.ModelDescription`, or its wire fields (as
        :func:`model_fields` makes them). ``optimizers`` (as
        :func:`~lightning_split.transport.optimizers.describe_optimizers` makes them) are
        timed by the server over its own copies of the parameters. The request carries
        ``optimizers`` and ``calibrate`` only when they differ from the defaults, so a server
        that predates them still answers.
        """
        started = time.perf_counter()
        fields = description.to_wire() if isinstance(description, ModelDescription) else dict(description)
        key = self._server_key(remote, fields, optimizers) if self.cache is not None else None
        hit = self.cache.get(key) if self.cache is not None and key is not None else None
        if hit is not None and _covers(hit.node_s, traced):
            return NodeCosts.from_cache(hit, "server", time.perf_counter() - started)
        (reply,) = remote.call([self._profile_request(fields, optimizers)])
        node_s = {str(name): float(value) for name, value in reply.node_s.items()}
        missing = [info.name for info in traced.nodes if info.name not in node_s]
        if missing:
            raise RuntimeError(f"the server's profile lacks node(s) {missing[:8]}; is it serving the same model?")
        wall_s = time.perf_counter() - started
        costs = NodeCosts(
            node_s,
            "server",
            reply.hardware,
            wall_s,
            float(reply.measure_s),
            False,
            dict(reply.calibration),
            _seconds_by_node(reply.forward_s),
            _seconds_by_node(reply.fixed_s),
        )
        if self.cache is not None and key is not None:
            self.cache.put(key, node_s, float(reply.measure_s), reply.hardware, costs.cache_details())
        return costs

    def _server_key(
        self, remote: RemoteServer, fields: Mapping[str, Any], optimizers: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any] | None:
        """The cache key of the server's costs; ``None`` when the server does not say its hardware."""
        (about,) = remote.call([ping_op()])
        if not about.hardware:
            return None
        return ProfileCache.key(
            str(fields["fingerprint"]),
            fields["example"],
            "server",
            about.hardware,
            self.warmup,
            self.repeats,
            torch_version=about.torch or "None",
            model=str(fields["model"]),
            calibrate=self.calibrate,
            optimizers=optimizers,
            **self._key_extra(),
        )

    def _profile_request(self, fields: Mapping[str, Any], optimizers: Sequence[Mapping[str, Any]]) -> messages.Profile:
        """The ``profile`` op for the model ``fields`` describe, with this profiler's settings."""
        return messages.Profile(
            **{name: fields[name] for name in ("model", "init_args", "fingerprint", "leaf_modules", "example")},
            graph=fields.get("graph", []),
            capture=fields.get("capture", "fx"),
            warmup=self.warmup,
            repeats=self.repeats,
            optimizers=[dict(optimizer) for optimizer in optimizers],
            calibrate=self.calibrate,
            micro_batches=self.micro_batches,
        )


_PER_NODE = ("forward_s", "fixed_s")


def _seconds_by_node(value: Any) -> dict[str, float]:
    """A node -> seconds mapping, checked (finite, >= 0); anything else is empty."""
    if not isinstance(value, Mapping):
        return {}
    result = {}
    for name, seconds in value.items():
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and 0 <= seconds < float("inf"):
            result[str(name)] = float(seconds)
    return result


def _covers(node_s: Mapping[str, float], traced: TracedModel) -> bool:
    return all(info.name in node_s for info in traced.nodes)


def model_fields(
    model: str, init_args: Mapping[str, Any], traced: TracedModel, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """What a ``profile`` op needs to rebuild and check the model on the server (shapes, never data).

    The wire fields of :meth:`ModelDescription.of` for the call ``args``, ``kwargs``.
    """
    return ModelDescription.of(model, init_args, traced, example_of(args, kwargs)).to_wire()
