"""What a placement costs the device besides time: training memory and energy per step.

Every plan report shows these (the text report, ``plan --json``, the plan picture, the demo), so
they are computed once, here: :func:`resources` gives a placement's :class:`Resources`, the
device's training memory (:mod:`~lightning_split.planning.memory`) against its preset's memory
size where the profile names a preset, and its energy per step
(:mod:`~lightning_split.planning.energy`); :func:`baseline_energies` the energy of each baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lightning_split.planning.baselines import best_layerwise, device_only, server_only
from lightning_split.planning.energy import EnergyBreakdown, EnergyModel, energy_model_for, energy_profile, step_energy
from lightning_split.planning.hardware import preset
from lightning_split.planning.memory import DEFAULT_OPTIMIZER_SLOTS, DeviceMemory, device_memory
from lightning_split.planning.profile import Profile

__all__ = ["Resources", "baseline_energies", "estimated_by", "resources"]


@dataclass(frozen=True)
class Resources:
    """A placement's device training memory and device energy per step.

    Attributes:
        memory: the device's training memory, by what holds it.
        energy: the device's joules per step, by what spends them.
        model: the power and radio the energy was computed with.
        capacity_bytes: the device preset's memory size (``None`` when the profile names none).
    """

    memory: DeviceMemory
    energy: EnergyBreakdown
    model: EnergyModel
    capacity_bytes: int | None = None

    @property
    def fits(self) -> bool | None:
        """Whether the training memory fits the device's memory (``None``: size not known)."""
        return None if self.capacity_bytes is None else self.memory.total <= self.capacity_bytes

    def to_json(self) -> dict[str, Any]:
        """The ``"memory"`` and ``"energy"`` objects of ``plan --json``."""
        memory = {**self.memory.to_json(), "device_capacity_bytes": self.capacity_bytes, "fits": self.fits}
        return {"memory": memory, "energy": {**self.energy.to_json(), **self.model.to_json()}}


def estimated_by(profile: Profile) -> str | None:
    """How an estimated profile's node costs were made (``None`` for a measured one), for reports.

    ``"estimated from FLOPs"``, or ``"estimated by the roofline of jetson-nano and t4"`` when the
    estimator costed a side by a hardware preset.
    """
    if not profile.extra.get("estimated"):
        return None
    presets = [profile.extra[side] for side in ("device", "server") if isinstance(profile.extra.get(side), str)]
    return f"estimated by the roofline of {' and '.join(presets)}" if presets else "estimated from FLOPs"


def _optimizer_slots(profile: Profile, optimizer_slots: int | None) -> int:
    if optimizer_slots is not None:
        return optimizer_slots
    recorded = profile.extra.get("optimizer_slots")
    return recorded if isinstance(recorded, int) else DEFAULT_OPTIMIZER_SLOTS


def resources(
    profile: Profile,
    device: Iterable[str],
    model: EnergyModel | None = None,
    optimizer_slots: int | None = None,
) -> Resources:
    """The device memory and energy of placing ``device`` (node names) on the device.

    Args:
        profile: the profile planned on.
        device: the device nodes.
        model: power and radio (default: the profile's device preset, else an assumed Jetson
            Nano, :func:`~lightning_split.planning.energy.energy_model_for`).
        optimizer_slots: optimizer state per parameter (default: the profile's
            ``optimizer_slots`` field, else Adam's 2).
    """
    names = list(device)
    chosen = model or energy_model_for(profile)
    named = profile.extra.get("device")
    capacity = preset(named).memory_bytes if isinstance(named, str) else None
    return Resources(
        device_memory(profile, names, _optimizer_slots(profile, optimizer_slots)),
        step_energy(profile, names, chosen),
        chosen,
        capacity,
    )


def baseline_energies(profile: Profile, model: EnergyModel | None = None) -> Mapping[str, float]:
    """The device's joules per step of each baseline: ``device_only``, ``server_only``, ``best_layerwise``.

    Each is placed on the profile in joules, so ``best_layerwise`` is the prefix of least
    energy (the energy objective's layer-wise baseline); the figures are energies.
    """
    chosen = model or energy_model_for(profile)
    joules = energy_profile(profile, chosen)
    placements = {"device_only": device_only, "server_only": server_only, "best_layerwise": best_layerwise}
    return {key: step_energy(profile, place(joules).device, chosen).total_j for key, place in placements.items()}
