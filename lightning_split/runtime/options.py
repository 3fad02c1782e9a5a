"""What ``SplitStrategy`` asks of a placement beyond speed: a codec, private inputs, a memory budget.

:class:`PlanOptions` holds the three settings (``SplitStrategy(codec=..., private_inputs=...,
device_memory=...)``), plans ``cut="auto"`` through
:func:`~lightning_split.planning.constrained.plan_with_options` with them
(:meth:`PlanOptions.plan`), and checks a user's cut before the first step
(:meth:`PlanOptions.check_cut`): a cut that sends a raw input, or anything computed from the
inputs without a device-side parameter, is refused with the tensor named and the fix; so is a
device part whose footprint exceeds the budget, with the smallest footprint that would fit.

The strategy always knows the parameters: the trace's ``param_bytes`` and estimated
``device_mem_bytes`` fill whatever a given profile lacks (:func:`with_trace_fields`), so private
inputs are enforced even on a profile file of the 0.1 format.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_split.costs.estimate import estimate_profile
from lightning_split.costs.memory import footprints, measured_saved_bytes, optimizer_slots
from lightning_split.graph.capture import TracedModel
from lightning_split.graph.programs import SplitError, SplitSpec
from lightning_split.planning import planner
from lightning_split.planning.constrained import plan_with_options, private_input_pins
from lightning_split.planning.constraints import device_footprint, privacy_line, private_input_violations
from lightning_split.planning.energy import EnergyModel
from lightning_split.planning.memory import DEFAULT_OPTIMIZER_SLOTS, node_training_bytes
from lightning_split.planning.pipelined import pipelined_step_time
from lightning_split.planning.profile import DEFAULT_LINK, Profile
from lightning_split.planning.units import format_bytes, parse_bytes
from lightning_split.transport.codecs import get_codec
from lightning_split.transport.coding import measure_codec_s_per_byte

__all__ = ["PlanOptions", "with_trace_fields"]


@dataclass(frozen=True)
class PlanOptions:
    """The codec, private inputs and device memory budget a placement must honour.

    Attributes:
        codec: a codec name (:data:`~lightning_split.transport.codecs.CODECS`).
        private_inputs: no raw input, in any form, crosses to the server.
        device_memory: the device part's training footprint in bytes at most (``None``: no budget).
        optimizer_slots: parameter-sized optimizer state tensors per parameter (2 for Adam).
        micro_batches: what ``cut="auto"`` plans for: ``M`` (the pipelined step ``T_M``) or
            ``"auto"`` (the placement and M of least ``T_M`` together, M from 1 to 16).
    """

    codec: str = "none"
    private_inputs: bool = True
    device_memory: int | None = None
    optimizer_slots: int = DEFAULT_OPTIMIZER_SLOTS  # optimizer state tensors per parameter (footprints)
    micro_batches: int | str = 1

    @classmethod
    def of(
        cls, codec: str = "none", private_inputs: bool = True, device_memory: int | str | None = None
    ) -> PlanOptions:
        """Checked options; ``device_memory`` as bytes or text like ``"2GB"``.

        Raises:
            ValueError: an unknown codec (the known ones are named) or an unreadable size.
        """
        get_codec(codec)
        if not isinstance(private_inputs, bool):
            raise ValueError(f"private_inputs must be True or False, got {private_inputs!r}")
        budget = None if device_memory is None else parse_bytes(device_memory)
        return cls(codec, private_inputs, budget)

    def for_optimizers(self, optimizers: Sequence[Any]) -> PlanOptions:
        """The same options with the optimizer state of ``optimizers`` in the footprints."""
        return dataclasses.replace(self, optimizer_slots=optimizer_slots(optimizers))

    def for_micro_batches(self, requested: int | str, allowed: int) -> PlanOptions:
        """The same options planning for the micro-batches the runtime may use.

        ``requested`` is ``SplitStrategy(micro_batches=...)``, ``allowed`` the most the model
        takes (:func:`~lightning_split.runtime.microbatch.micro_batching_for`: 1 for a model
        that is not per-sample under ``"auto"``).
        """
        if allowed <= 1:
            return dataclasses.replace(self, micro_batches=1)
        return dataclasses.replace(self, micro_batches="auto" if requested == "auto" else allowed)

    def footprints(self, traced: TracedModel, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, int] | None:
        """Measured ``device_mem_bytes`` per node when there is a budget to meet (``None`` otherwise)."""
        if self.device_memory is None:
            return None
        return footprints(traced, self.optimizer_slots, measured_saved_bytes(traced, args, kwargs))

    def plan(
        self,
        profile: Profile,
        method: str,
        pin_device: Iterable[str],
        pin_server: Iterable[str],
        objective: str = "time",
        energy: EnergyModel | None = None,
    ) -> planner.Plan:
        """The best placement of ``profile`` under these options (``PlanningError`` if none is feasible).

        A lossy codec's encode and decode time is measured here (once per process) and charged
        per byte with each transfer, unless the profile already states it (``codec_s_per_byte``).
        """
        costs = dict(profile.extra.get("codec_s_per_byte") or {})
        if self.codec != "none" and self.codec not in costs:
            costs[self.codec] = _codec_s_per_byte(self.codec)
            profile = dataclasses.replace(profile, extra={**profile.extra, "codec_s_per_byte": costs})
        outcome = plan_with_options(
            profile,
            method,
            micro_batches=self.micro_batches if objective == "time" else 1,
            codec=self.codec,
            private_inputs=self.private_inputs,
            device_memory=self.device_memory,
            pin_device=pin_device,
            pin_server=pin_server,
            objective=objective,
            energy=energy,
        )
        return outcome.plan

    def step_time(self, profile: Profile, device: Iterable[str]) -> float:
        """Predicted step time of a placement with this codec and these micro-batches (section 1b of the spec).

        For ``micro_batches="auto"``: with the number of micro-batches from 1 to 16 that suits it best.
        """
        device = list(device)
        choices = range(1, 17) if self.micro_batches == "auto" else (int(self.micro_batches),)
        return min(pipelined_step_time(profile, device, m, self.codec).total for m in choices)

    def check_cut(
        self, traced: TracedModel, spec: SplitSpec, cut: list[str], memory: Mapping[str, int] | None = None
    ) -> None:
        """Refuse a user cut that sends a raw tensor or does not fit the budget (before the first step).

        Raises:
            SplitError: naming the raw tensor and its server consumer, or the footprint, the
                budget and the smallest footprint that fits.
        """
        profile = with_trace_fields(estimate_profile(traced, DEFAULT_LINK), traced, memory)
        server = set(spec.server_nodes)
        device = [name for name in profile.names if name not in server]
        if self.private_inputs:
            violations = private_input_violations(profile, device)
            if violations:
                raw, consumer = violations[0]
                raise SplitError(
                    f"cut {cut} would send the raw input tensor {raw!r} to the server (its consumer {consumer!r} "
                    "runs there): with private inputs (the default) the inputs, and anything computed from them "
                    "without a device-side parameter, stay on the device. Cut deeper, after a layer with "
                    "parameters (or use cut='auto'), or pass SplitStrategy(private_inputs=False) to allow it"
                )
        if self.device_memory is not None and server:
            footprint = device_footprint(profile, device)
            if footprint > self.device_memory:
                smallest = self.smallest_footprint(profile)
                raise SplitError(
                    f"cut {cut} needs {format_bytes(footprint)} ({footprint} bytes) of device memory, more than "
                    f"device_memory={self.device_memory} bytes; the smallest device footprint of any placement "
                    f"is {smallest} bytes: cut earlier, use cut='auto', or raise device_memory"
                )

    def privacy(self, traced: TracedModel, spec: SplitSpec) -> str:
        """Whether a raw input crosses with this placement (one line for the plan log)."""
        profile = estimate_profile(traced, DEFAULT_LINK)
        server = set(spec.server_nodes)
        return privacy_line(profile, [n for n in profile.names if n not in server], self.private_inputs)

    def smallest_footprint(self, profile: Profile) -> int:
        """The footprint of the smallest feasible device part (inputs and, with private inputs, their consumers)."""
        must = {node.name for node in profile.nodes if node.kind == "input"}
        if self.private_inputs:
            must |= private_input_pins(profile)
        closed = _ancestors(profile, must)
        return device_footprint(profile, closed)


def with_trace_fields(profile: Profile, traced: TracedModel, memory: Mapping[str, int] | None = None) -> Profile:
    """``profile`` with ``param_bytes`` from the trace wherever it has none, and ``device_mem_bytes``.

    ``memory`` (measured footprints, :meth:`PlanOptions.footprints`) replaces every node's
    ``device_mem_bytes``; without it a node that has none gets the estimate from tensor sizes.
    """
    infos = {info.name: info for info in traced.nodes}
    nodes = []
    for node in profile.nodes:
        info = infos.get(node.name)
        changes: dict[str, Any] = {}
        if info is not None and node.param_bytes is None:
            changes["param_bytes"] = info.param_bytes
        if memory is not None and node.name in memory:
            changes["device_mem_bytes"] = int(memory[node.name])
        elif info is not None and node.device_mem_bytes is None:
            changes["device_mem_bytes"] = node_training_bytes(info.param_bytes, info.out_bytes)
        nodes.append(dataclasses.replace(node, **changes) if changes else node)
    extra = {**profile.extra, "device_mem_source": "measured saved tensors"} if memory is not None else profile.extra
    return dataclasses.replace(profile, nodes=nodes, extra=extra)


@functools.cache
def _codec_s_per_byte(codec: str) -> float:
    """Seconds to encode and decode one raw byte with ``codec`` on this machine (the server is taken as alike)."""
    return measure_codec_s_per_byte(get_codec(codec))


def _ancestors(profile: Profile, names: set[str]) -> set[str]:
    inputs = {node.name: node.inputs for node in profile.nodes}
    closed, stack = set(names), list(names)
    while stack:
        for source in inputs[stack.pop()]:
            if source not in closed:
                closed.add(source)
                stack.append(source)
    return closed
