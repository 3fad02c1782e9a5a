"""The device's energy per training step, and the placement of least energy.

For a placement (D, S) whose step time has the terms of ``docs/cost-model.md`` (device compute,
server compute, upload, download, round trips), the device spends

    E(D, S) = active_w x device_s                                   (computing its part)
            + idle_w   x (server_s + upload_s + download_s + rtt_s)  (waiting for the rest)
            + radio: up_j_per_byte x bytes sent + down_j_per_byte x bytes received
                     + radio active_w x (upload_s + download_s + rtt_s)

with the board's powers from its preset (:mod:`lightning_split.planning.hardware`) and the
radio's from Huang et al.'s measured Wi-Fi/LTE power model. Each crossing tensor goes up once
and its gradient comes down once (a server-side model output: down, then its gradient up), so
the bytes sent equal the bytes received: the crossing bytes X of the cost model.

*Energy is linear in the placement like time, so the same min cut minimises it.* Every term
above is a sum over nodes (``active_w x device_s(v)`` for v in D, ``idle_w x server_s(v)`` for v
in S), a sum over crossing tensors (``out_bytes(u)`` times a constant per byte) or a constant
paid iff S is not empty (the round trips). That is the form of T(D, S) with

    device_s'(v) = active_w x device_s(v)         server_s'(v) = idle_w x server_s(v)
    1 / uplink'  = (idle_w + radio active_w) / uplink   + up_j_per_byte
    1 / downlink' = (idle_w + radio active_w) / downlink + down_j_per_byte
    rtt'         = (idle_w + radio active_w) x rtt

so :func:`energy_profile` rewrites the profile into joules and any exact planner of T (the
blockwise and full min cuts, brute force, the baselines, pins and constraints, which restrict the
placements and not the costs) minimises E on it; T' of a placement is E of it exactly. This holds
for the sequential step; the pipelined step (``micro_batches`` > 1) overlaps the phases, so its
idle time is a max() of them and its energy is not of this form.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lightning_split.planning.costmodel import Breakdown, step_time
from lightning_split.planning.hardware import Hardware, Radio, preset, radio
from lightning_split.planning.profile import Link, NodeCost, Profile

__all__ = [
    "DEFAULT_DEVICE",
    "DEFAULT_RADIO",
    "OBJECTIVES",
    "EnergyBreakdown",
    "EnergyModel",
    "crossing_bytes",
    "energy_model_for",
    "energy_profile",
    "step_energy",
]

#: What the planner can minimise: the step time or the device's energy per step.
OBJECTIVES = ("time", "energy")
#: The device whose power is assumed when a profile names none: the Jetson Nano class that the
#: FLOP estimate's default throughput stands for.
DEFAULT_DEVICE = "jetson-nano"
#: The radio assumed when none is named.
DEFAULT_RADIO = "wifi"


@dataclass(frozen=True)
class EnergyModel:
    """The device's power while computing and while waiting, and its radio.

    Attributes:
        active_w: board power while it computes its part.
        idle_w: board power while it waits for the link and the server (0 when unknown).
        radio: the radio's per-byte energy and base power.
        device: the preset's key, when built from one.
        idle_known: whether ``idle_w`` is a known figure (``False``: waiting is charged nothing).
        assumed: the device was not named but assumed (:data:`DEFAULT_DEVICE`).
    """

    active_w: float
    idle_w: float
    radio: Radio
    device: str | None = None
    idle_known: bool = True
    assumed: bool = False

    def __post_init__(self) -> None:
        for name in ("active_w", "idle_w"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be finite watts >= 0, got {value!r}")

    @classmethod
    def for_device(
        cls, device: str | Hardware, radio_name: str | Radio = DEFAULT_RADIO, assumed: bool = False
    ) -> EnergyModel:
        """The model of a device preset (``"jetson-nano"``) over a radio (``"wifi"`` or ``"lte"``)."""
        hw = preset(device, role="device")
        idle = hw.idle_w
        return cls(hw.active_w, 0.0 if idle is None else idle, radio(radio_name), hw.key, idle is not None, assumed)

    def describe(self) -> str:
        """``"jetson-nano at 10 W (idle not known: waiting costs 0 W), Wi-Fi"``, for reports."""
        idle = f"{self.idle_w:g} W idle" if self.idle_known else "idle power not known: waiting counted at 0 W"
        who = self.device or "the device"
        return f"{who}{' (assumed)' if self.assumed else ''} at {self.active_w:g} W ({idle}), {self.radio.label}"

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "device_assumed": self.assumed,
            "active_w": self.active_w,
            "idle_w": self.idle_w,
            "idle_known": self.idle_known,
            "radio": self.radio.key,
            "radio_up_j_per_byte": self.radio.up_j_per_byte,
            "radio_down_j_per_byte": self.radio.down_j_per_byte,
            "radio_active_w": self.radio.active_w,
        }


def energy_model_for(profile: Profile, radio_name: str | Radio | None = None) -> EnergyModel:
    """The energy model of the device a profile names (its ``device`` field), over its radio.

    The radio is ``radio_name``, else the profile's ``radio`` field, else :data:`DEFAULT_RADIO`.
    A profile that names no device (a measured one, or a FLOP estimate) gets the power of
    :data:`DEFAULT_DEVICE`, marked ``assumed``.
    """
    chosen = radio_name or profile.extra.get("radio") or DEFAULT_RADIO
    device = profile.extra.get("device")
    if isinstance(device, str):
        return EnergyModel.for_device(device, chosen)
    return EnergyModel.for_device(DEFAULT_DEVICE, chosen, assumed=True)


@dataclass(frozen=True)
class EnergyBreakdown:
    """The device's joules per training step, by what spends them.

    Attributes:
        compute_j: ``active_w x`` the device's compute time.
        idle_j: ``idle_w x`` the time it waits (server compute, transfers, round trips).
        radio_j: the radio's per-byte energy of the bytes sent and received, plus its base
            power over the transfers and round trips.
        sent_bytes: bytes the device sends per step (equal to the bytes it receives).
    """

    compute_j: float
    idle_j: float
    radio_j: float
    sent_bytes: int

    @property
    def total_j(self) -> float:
        return self.compute_j + self.idle_j + self.radio_j

    def to_json(self) -> dict[str, float]:
        return {
            "total_j": self.total_j,
            "compute_j": self.compute_j,
            "idle_j": self.idle_j,
            "radio_j": self.radio_j,
            "sent_bytes": self.sent_bytes,
            "received_bytes": self.sent_bytes,
        }


def crossing_bytes(profile: Profile, device: Iterable[str]) -> int:
    """Bytes that cross per step one way: device tensors with a server consumer, once each, and
    the model outputs computed on the server (the same bytes cross back as gradients)."""
    on_device = set(device)
    sent = {source for node in profile.nodes if node.name not in on_device for source in node.inputs}
    sent = {name for name in sent if name in on_device}
    sent.update(name for name in profile.outputs if name not in on_device)
    sizes = {node.name: node.out_bytes for node in profile.nodes}
    return sum(sizes[name] for name in sent)


def step_energy(
    profile: Profile, device: Iterable[str], model: EnergyModel, breakdown: Breakdown | None = None
) -> EnergyBreakdown:
    """The device's energy for one step of placing ``device`` on the device (module docstring).

    ``breakdown``, the placement's step-time terms, is computed when not given.
    """
    names = list(device)
    terms = breakdown or step_time(profile, names)
    sent = crossing_bytes(profile, names)
    link_busy = terms.upload_s + terms.download_s + terms.rtt_s
    radio_j = sent * (model.radio.up_j_per_byte + model.radio.down_j_per_byte) + model.radio.active_w * link_busy
    return EnergyBreakdown(
        compute_j=model.active_w * terms.device_s,
        idle_j=model.idle_w * (terms.server_s + link_busy),
        radio_j=radio_j,
        sent_bytes=sent,
    )


def _per_byte(wait_w: float, bytes_per_s: float, j_per_byte: float) -> float:
    """The rewritten rate: 1 / (seconds per byte x waiting watts + joules per byte)."""
    joules = wait_w / bytes_per_s + j_per_byte
    return math.inf if joules == 0 else 1.0 / joules


def _scaled(seconds: float | None, watts: float) -> float | None:
    return None if seconds is None else watts * seconds


def _in_joules(node: NodeCost, device_w: float, server_w: float) -> NodeCost:
    """The node with its device seconds at ``device_w`` and its server seconds at ``server_w``, as joules."""
    return dataclasses.replace(
        node,
        device_s=device_w * node.device_s,
        server_s=server_w * node.server_s,
        device_fwd_s=_scaled(node.device_fwd_s, device_w),
        server_fwd_s=_scaled(node.server_fwd_s, server_w),
        device_fixed_s=_scaled(node.device_fixed_s, device_w),
        server_fixed_s=_scaled(node.server_fixed_s, server_w),
    )


def energy_profile(profile: Profile, model: EnergyModel) -> Profile:
    """The profile rewritten so that its step time of any placement is that placement's energy.

    Node seconds become joules (``active_w x device_s``, ``idle_w x server_s``) and the link's
    rates and round trip are scaled as the module docstring derives; the graph is unchanged.
    Planning this profile for time plans the original for energy.
    """
    wait_w = model.idle_w + model.radio.active_w
    link = profile.link
    joules = Link(
        _per_byte(wait_w, link.uplink_bytes_per_s, model.radio.up_j_per_byte),
        _per_byte(wait_w, link.downlink_bytes_per_s, model.radio.down_j_per_byte),
        wait_w * link.rtt_s,
        None if link.message_s is None else wait_w * link.message_s,
    )
    nodes = [_in_joules(node, model.active_w, model.idle_w) for node in profile.nodes]
    return Profile(nodes, list(profile.outputs), joules, {**profile.extra, "objective": "energy"})
