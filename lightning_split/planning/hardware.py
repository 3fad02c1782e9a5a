"""Hardware presets: what a device, a server and a radio can do, each figure with its source.

A preset answers the planner's questions about a deployment you do not have at hand: how fast
a board or a GPU runs fp32 training (compute and memory bandwidth, for the roofline estimate of
:mod:`lightning_split.planning.roofline`), how much memory it has, and how much power it draws
(for the device's energy per step, :mod:`lightning_split.planning.energy`). It is plain data
(no torch), so ``lightning-split plan --device jetson-nano --server t4`` works on any laptop.

What *sustained* means here. The peak is the datasheet's fp32 figure (or cores x FLOPs per cycle
x clock where the datasheet gives those instead). Eager PyTorch training does not reach it: the
delay benchmark's calibration on an H200 (``benchmarks/delay.py --calibrate-cuda``) measured
about a quarter of the fp32 peak on the large convolutions and matrix products, 70% of the DRAM
bandwidth is what STREAM-like copies reach, and each kernel costs a launch plus PyTorch's eager
dispatch (15-18 us measured on the x86 host). Hence the defaults :data:`COMPUTE_FRACTION` = 0.25,
:data:`MEMORY_FRACTION` = 0.7 and a per-kernel ``launch_s``; the ARM and RISC-V hosts dispatch from
slower cores, assumed 1.3 to 2.7 times slower. None of the boards was measured: these are
assumptions, stated so, and a measured profile (``lightning-split profile``) replaces them.

Power is the whole board's (or GPU's) draw under a training load, ``active_w``: the power mode's
budget on the Jetsons, a measured full-load figure on the boards that have one, the board power
(TDP) of the server GPUs. ``idle_w`` is what the board draws while it waits for the server, where a
figure is known; ``None`` where not (the energy model then charges waiting nothing, and says so).

Every figure of every preset names its source in :attr:`Hardware.sources`; a figure marked
``assumption`` has none better. :func:`preset` looks a preset up by name, :func:`radio` a radio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning_split.planning.units import BYTES_PER_S_PER_MBIT_S

__all__ = [
    "COMPUTE_FRACTION",
    "MEMORY_FRACTION",
    "PRESETS",
    "RADIOS",
    "Hardware",
    "Radio",
    "UnknownHardwareError",
    "preset",
    "radio",
]

#: Share of the fp32 peak that eager training sustains on compute-bound nodes (measured on an H200).
COMPUTE_FRACTION = 0.25
#: Share of the DRAM bandwidth that memory-bound nodes sustain (what STREAM-like copies reach).
MEMORY_FRACTION = 0.7

_SUSTAINED = "assumption: 0.25 of the fp32 peak, 0.7 of the DRAM bandwidth (calibrated on an H200, delay.py)"
_LAUNCH_X86 = "measured: 16-18 us per kernel forward + backward on an x86-hosted H200 (delay.py --calibrate-cuda)"


class UnknownHardwareError(KeyError):
    """No preset has that name; the message lists the known ones.

    A :class:`KeyError` for lookups, with a readable ``str()`` (a plain ``KeyError`` would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Hardware:
    """One device or server class: fp32 throughput, memory, kernel launch cost and power.

    Attributes:
        key: the preset's name (``"jetson-nano"``).
        label: how reports name it (``"Jetson Nano"``).
        role: ``"device"`` (an edge board or SoC) or ``"server"`` (a GPU).
        peak_gflops: fp32 peak, GFLOP/s.
        memory_gbs: DRAM bandwidth, GB/s (10^9 bytes per second).
        memory_gb: memory size, GB (10^9 bytes; shared by CPU and GPU on the SoCs).
        active_w: power drawn under a training load, W.
        idle_w: power drawn while waiting, W; ``None`` when no figure is known.
        launch_s: seconds per kernel (launch and eager dispatch).
        sources: where each figure comes from, by attribute name (and ``"sustained"`` for the fractions).
        compute_fraction: share of ``peak_gflops`` sustained on compute-bound nodes.
        memory_fraction: share of ``memory_gbs`` sustained on memory-bound nodes.
        aliases: other names :func:`preset` accepts.
    """

    key: str
    label: str
    role: str
    peak_gflops: float
    memory_gbs: float
    memory_gb: float
    active_w: float
    idle_w: float | None
    launch_s: float
    sources: Mapping[str, str] = field(default_factory=dict)
    compute_fraction: float = COMPUTE_FRACTION
    memory_fraction: float = MEMORY_FRACTION
    aliases: tuple[str, ...] = ()

    @property
    def sustained_gflops(self) -> float:
        """GFLOP/s sustained on compute-bound nodes: ``compute_fraction x peak_gflops``."""
        return self.compute_fraction * self.peak_gflops

    @property
    def compute_flops_per_s(self) -> float:
        return self.sustained_gflops * 1e9

    @property
    def memory_bytes_per_s(self) -> float:
        """Bytes per second sustained on memory-bound nodes: ``memory_fraction x memory_gbs``."""
        return self.memory_fraction * self.memory_gbs * 1e9

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * 1e9)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "role": self.role,
            "peak_fp32_gflops": self.peak_gflops,
            "sustained_gflops": self.sustained_gflops,
            "memory_gbs": self.memory_gbs,
            "memory_gb": self.memory_gb,
            "active_w": self.active_w,
            "idle_w": self.idle_w,
            "launch_us": self.launch_s * 1e6,
            "compute_fraction": self.compute_fraction,
            "memory_fraction": self.memory_fraction,
            "sources": dict(self.sources),
        }


def _jetson(key: str, label: str, cores: int, arch: str, ghz: float, datasheet: str, **figures: Any) -> Hardware:
    sources = {
        "peak_gflops": f"{cores} {arch} CUDA cores x 2 FLOPs x {ghz * 1e3:g} MHz; {datasheet}",
        "memory_gbs": figures.pop("memory_source"),
        "memory_gb": datasheet,
        "active_w": f"the module's highest power mode, {datasheet}",
        "idle_w": "not known (no datasheet figure)",
        "launch_s": "assumption: the x86 figure times the ARM host's slower dispatch (no Jetson measured)",
        "sustained": _SUSTAINED,
    }
    return Hardware(key, label, "device", cores * 2 * ghz, idle_w=None, sources=sources, **figures)


def _gpu(key: str, label: str, peak: float, gbs: float, gb: float, watts: float, source: str, **extra: Any) -> Hardware:
    sources = {name: source for name in ("peak_gflops", "memory_gbs", "memory_gb", "active_w")} | {
        "idle_w": "not needed: only the device's energy is counted",
        "launch_s": _LAUNCH_X86,
        "sustained": _SUSTAINED,
    }
    sources.update(extra.pop("sources", {}))
    return Hardware(key, label, "server", peak, gbs, gb, watts, None, 15e-6, sources, **extra)


_DEVICES = (
    _jetson("jetson-nano", "Jetson Nano", 128, "Maxwell", 0.9216, "NVIDIA Jetson Nano data sheet DA-09366",
            memory_gbs=25.6, memory_gb=4.0, active_w=10.0, launch_s=40e-6, aliases=("nano",),
            memory_source="64-bit LPDDR4 at 1600 MHz (25.6 GB/s); NVIDIA Jetson Nano data sheet DA-09366"),
    _jetson("jetson-tx2", "Jetson TX2", 256, "Pascal", 1.3, "NVIDIA Jetson TX2 data sheet DS-08260",
            memory_gbs=59.7, memory_gb=8.0, active_w=15.0, launch_s=40e-6, aliases=("tx2",),
            memory_source="128-bit LPDDR4 at 1866 MHz (59.7 GB/s); NVIDIA Jetson TX2 data sheet DS-08260"),
    _jetson("jetson-xavier-nx", "Jetson Xavier NX", 384, "Volta", 1.1, "NVIDIA Jetson Xavier NX data sheet DS-09693",
            memory_gbs=51.2, memory_gb=8.0, active_w=15.0, launch_s=30e-6, aliases=("xavier-nx", "xavier_nx"),
            memory_source="128-bit LPDDR4x at 1600 MHz (51.2 GB/s); NVIDIA Jetson Xavier NX data sheet DS-09693"),
    _jetson("jetson-agx-orin", "Jetson AGX Orin", 2048, "Ampere", 1.3, "NVIDIA Jetson AGX Orin data sheet DS-10662",
            memory_gbs=204.8, memory_gb=64.0, active_w=60.0, launch_s=20e-6, aliases=("agx-orin", "agx_orin", "orin"),
            memory_source="256-bit LPDDR5 (204.8 GB/s); NVIDIA Jetson AGX Orin data sheet DS-10662"),
    Hardware(
        "raspberry-pi-4", "Raspberry Pi 4 Model B 8GB", "device", 4 * 8 * 1.5, 12.8, 8.0, 5.4, 2.2, 30e-6,
        {
            "peak_gflops": "4 Cortex-A72 cores x 8 fp32 FLOPs per cycle (one 128-bit NEON FMA) x 1.5 GHz; "
            "Raspberry Pi 4 Model B product brief (BCM2711, 1.5 GHz)",
            "memory_gbs": "LPDDR4-3200 on a 32-bit bus (12.8 GB/s); Raspberry Pi 4 Model B product brief",
            "memory_gb": "Raspberry Pi 4 Model B product brief (1, 2, 4 or 8 GB; the largest)",
            "active_w": "measured 5.4 W at high CPU load, chipwired.com/raspberry-pi-power-use (USB meter, Pi 4)",
            "idle_w": "measured 2.2 W idle, chipwired.com/raspberry-pi-power-use (USB meter, Pi 4)",
            "launch_s": "assumption: twice the x86 per-op dispatch (Cortex-A72 host)",
            "sustained": _SUSTAINED,
        },
        aliases=("pi4", "rpi4", "raspberry-pi4"),
    ),
    Hardware(
        "raspberry-pi-5", "Raspberry Pi 5 8GB", "device", 4 * 16 * 2.4, 17.1, 8.0, 8.0, 3.0, 15e-6,
        {
            "peak_gflops": "4 Cortex-A76 cores x 16 fp32 FLOPs per cycle (two 128-bit NEON FMA pipes) x 2.4 GHz; "
            "Raspberry Pi 5 product brief (BCM2712, 2.4 GHz)",
            "memory_gbs": "LPDDR4X-4267 on a 32-bit bus (17.1 GB/s); Raspberry Pi 5 product brief",
            "memory_gb": "Raspberry Pi 5 product brief (2, 4 or 8 GB at launch; 8 GB taken)",
            "active_w": "assumption: 8 W under a full CPU load (the product brief names only the 27 W supply)",
            "idle_w": "measured about 3 W idle, u-labs.de (Raspberry Pi 5 power measurements)",
            "launch_s": "assumption: the x86 per-op dispatch (Cortex-A76 host)",
            "sustained": _SUSTAINED,
        },
        aliases=("pi5", "rpi5", "raspberry-pi5"),
    ),
    Hardware(
        "licheepi-4a", "LicheePi 4A (TH1520) 16GB", "device", 4 * 8 * 1.85, 29.9, 16.0, 10.0, None, 40e-6,
        {
            "peak_gflops": "4 XuanTie C910 cores x 8 fp32 FLOPs per cycle (128-bit RVV 0.7.1 FMA) x 1.85 GHz; "
            "Sipeed LicheePi 4A / T-Head TH1520 specification",
            "memory_gbs": "64-bit LPDDR4X at 3733 MT/s (29.9 GB/s); Sipeed LicheePi 4A specification",
            "memory_gb": "Sipeed LicheePi 4A specification (8 or 16 GB; the largest)",
            "active_w": "assumption: 10 W, the board's 12 V / 2 A class supply at half load (no measurement)",
            "idle_w": "not known (no published figure)",
            "launch_s": "assumption: 2.7 times the x86 dispatch (the slowest host here)",
            "sustained": "assumption: 0.0625 of the vector peak (PyTorch's RISC-V builds run scalar code, "
            "a quarter of the 4-lane vector peak, at the usual 0.25) and 0.7 of the DRAM bandwidth",
        },
        compute_fraction=COMPUTE_FRACTION / 4,
        aliases=("licheepi4a", "lpi4a", "th1520"),
    ),
    Hardware(
        "phone", "phone-class SoC (Mali-G78 MP20, Google Tensor)", "device", 64 * 20 * 0.848, 51.2, 8.0, 5.0, None,
        20e-6,
        {
            "peak_gflops": "20 Mali-G78 cores x 64 fp32 operations per clock (Arm Mali GPU datasheet 2021) "
            "x 848 MHz (Google Tensor's GPU clock as reviews report it)",
            "memory_gbs": "LPDDR5-6400 on a 64-bit bus (51.2 GB/s), Google Tensor as reviews report it",
            "memory_gb": "Pixel 6 specification (8 GB)",
            "active_w": "assumption: 5 W, a phone's sustained thermal envelope",
            "idle_w": "not known (no published figure)",
            "launch_s": "assumption: 1.3 times the x86 dispatch",
            "sustained": _SUSTAINED + "; assumes a GPU training backend, which phones rarely expose",
        },
        aliases=("phone-soc", "mobile", "tensor"),
    ),
)  # fmt: skip

_SERVERS = (
    _gpu("t4", "T4", 8141.0, 320.0, 16.0, 70.0, "NVIDIA T4 product brief (8.1 TFLOP/s fp32, 320 GB/s GDDR6, 70 W)"),
    _gpu("l4", "L4", 30300.0, 300.0, 24.0, 72.0, "NVIDIA L4 data sheet (30.3 TFLOP/s fp32, 300 GB/s, 24 GB, 72 W)"),
    _gpu("a10", "A10", 31200.0, 600.0, 24.0, 150.0, "NVIDIA A10 data sheet (31.2 TFLOP/s fp32, 600 GB/s, 150 W)"),
    _gpu("rtx-3090", "RTX 3090", 10496 * 2 * 1.695, 936.0, 24.0, 350.0,
         "10496 Ampere cores x 2 x 1.695 GHz, 936 GB/s GDDR6X, 24 GB, 350 W; NVIDIA Ampere GA102 whitepaper",
         aliases=("rtx3090", "3090")),
    _gpu("rtx-4090", "RTX 4090", 82600.0, 1008.0, 24.0, 450.0,
         "82.6 TFLOP/s fp32, 1008 GB/s GDDR6X, 24 GB, 450 W; NVIDIA Ada Lovelace architecture whitepaper",
         aliases=("rtx4090", "4090")),
    _gpu("a100", "A100 SXM4 80GB", 19500.0, 2039.0, 80.0, 400.0,
         "NVIDIA A100 data sheet (19.5 TFLOP/s fp32, 2039 GB/s HBM2e, 80 GB, 400 W SXM4)"),
    _gpu("h100", "H100 SXM5", 67000.0, 3350.0, 80.0, 700.0,
         "NVIDIA H100 data sheet (67 TFLOP/s fp32, 3.35 TB/s HBM3, 80 GB, 700 W SXM5)"),
    _gpu("h200", "H200 SXM", 132 * 128 * 2 * 1.98, 4800.0, 141.0, 700.0,
         "132 SMs x 128 fp32 cores x 2 x 1.98 GHz, 4.8 TB/s HBM3e, 141 GB, 700 W; NVIDIA H200 data sheet"),
)  # fmt: skip

#: Every preset by its key: the edge devices first, then the servers.
PRESETS: Mapping[str, Hardware] = {hw.key: hw for hw in (*_DEVICES, *_SERVERS)}


@dataclass(frozen=True)
class Radio:
    """The device radio's energy: a linear power model, per byte moved plus a base while active.

    ``P = up_w_per_mbps x uplink Mbit/s + down_w_per_mbps x downlink Mbit/s + active_w`` while
    transferring (Huang et al., "A Close Examination of Performance and Power Characteristics of
    4G LTE Networks", MobiSys 2012; the model Neurosurgeon, ASPLOS 2017, uses for its energy
    objective). Integrated over a transfer, the throughput terms give a fixed energy per byte,
    and the base power is drawn for as long as the link is busy.
    """

    key: str
    label: str
    up_w_per_mbps: float
    down_w_per_mbps: float
    active_w: float
    source: str

    @property
    def up_j_per_byte(self) -> float:
        """Joules per byte sent: W per Mbit/s is J per Mbit, and a byte is 1/125000 Mbit."""
        return self.up_w_per_mbps / BYTES_PER_S_PER_MBIT_S

    @property
    def down_j_per_byte(self) -> float:
        """Joules per byte received."""
        return self.down_w_per_mbps / BYTES_PER_S_PER_MBIT_S

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "up_j_per_byte": self.up_j_per_byte,
            "down_j_per_byte": self.down_j_per_byte,
            "active_w": self.active_w,
            "source": self.source,
        }


_HUANG = "Huang et al., MobiSys 2012, power model table (as used by Neurosurgeon, ASPLOS 2017)"

#: Radios by key: Wi-Fi and LTE, from the same measured power model.
RADIOS: Mapping[str, Radio] = {
    "wifi": Radio("wifi", "Wi-Fi", 0.28317, 0.13701, 0.13286, f"{_HUANG}: 283.17 / 137.01 mW per Mbit/s, 132.86 mW"),
    "lte": Radio("lte", "LTE", 0.43839, 0.05197, 1.28804, f"{_HUANG}: 438.39 / 51.97 mW per Mbit/s, 1288.04 mW"),
}


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _known(role: str | None) -> str:
    groups = []
    for wanted in ("device", "server"):
        if role in (None, wanted):
            keys = [hw.key for hw in PRESETS.values() if hw.role == wanted]
            groups.append(f"{wanted}s: {', '.join(keys)}")
    return "; ".join(groups)


def preset(name: str | Hardware, role: str | None = None) -> Hardware:
    """The preset called ``name`` (its key or an alias, any case, ``_`` or ``-``); a :class:`Hardware` passes.

    Args:
        name: ``"jetson-nano"``, ``"Jetson_Nano"``, ``"nano"``, ``"t4"``, ...
        role: ``"device"`` or ``"server"`` to insist on one kind (a T4 is no edge device).

    Raises:
        UnknownHardwareError: no preset has that name, or it has another role; the message
            lists the known presets.
    """
    if isinstance(name, Hardware):
        found = name
    else:
        wanted = _normal(name)
        found = next((hw for hw in PRESETS.values() if wanted == hw.key or wanted in hw.aliases), None)
        if found is None:
            raise UnknownHardwareError(f"unknown hardware preset {name!r}; known presets: {_known(role)}")
    if role is not None and found.role != role:
        known = _known(role)
        raise UnknownHardwareError(f"{found.key!r} is a {found.role} preset, not a {role}; known presets: {known}")
    return found


def radio(name: str | Radio) -> Radio:
    """The radio called ``name`` (``"wifi"`` or ``"lte"``); a :class:`Radio` passes.

    Raises:
        UnknownHardwareError: no radio has that name (the message lists the known ones).
    """
    if isinstance(name, Radio):
        return name
    key = _normal(name).replace("-", "")
    if key not in RADIOS:
        raise UnknownHardwareError(f"unknown radio {name!r}; known radios: {', '.join(RADIOS)}")
    return RADIOS[key]
