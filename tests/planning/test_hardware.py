"""Hardware presets (every figure sourced, lookup by name) and the roofline node cost."""

from __future__ import annotations

import pytest

from lightning_split.planning.hardware import (
    COMPUTE_FRACTION,
    MEMORY_FRACTION,
    PRESETS,
    RADIOS,
    UnknownHardwareError,
    preset,
    radio,
)
from lightning_split.planning.roofline import is_view, node_seconds

DEVICES = ("jetson-nano", "jetson-tx2", "jetson-xavier-nx", "jetson-agx-orin", "raspberry-pi-4", "raspberry-pi-5",
           "licheepi-4a", "phone")  # fmt: skip
SERVERS = ("t4", "l4", "a10", "rtx-3090", "rtx-4090", "a100", "h100")
FIGURES = ("peak_gflops", "memory_gbs", "memory_gb", "active_w", "idle_w", "launch_s", "sustained")


def test_the_issue_s_presets_exist_in_their_roles():
    for key in DEVICES:
        assert PRESETS[key].role == "device", key
    for key in SERVERS:
        assert PRESETS[key].role == "server", key


@pytest.mark.parametrize("key", list(PRESETS))
def test_every_figure_is_positive_and_names_its_source(key):
    hw = PRESETS[key]
    for name in ("peak_gflops", "memory_gbs", "memory_gb", "active_w", "launch_s"):
        assert getattr(hw, name) > 0, name
    assert hw.idle_w is None or 0 < hw.idle_w < hw.active_w
    for figure in FIGURES:
        assert len(hw.sources.get(figure, "")) > 10, f"{key}: {figure} has no source"
    assert 0 < hw.compute_fraction <= 1 and 0 < hw.memory_fraction <= 1
    data = hw.to_json()
    assert data["key"] == key and data["sustained_gflops"] == pytest.approx(hw.compute_fraction * hw.peak_gflops)


def test_datasheet_figures_the_benchmark_used_before():
    nano = preset("jetson-nano")
    assert nano.peak_gflops == pytest.approx(236, abs=0.5) and nano.memory_gbs == 25.6 and nano.memory_gb == 4
    assert nano.sustained_gflops == pytest.approx(COMPUTE_FRACTION * 128 * 2 * 0.9216)
    assert nano.memory_bytes_per_s == pytest.approx(MEMORY_FRACTION * 25.6e9)
    assert preset("t4").peak_gflops == 8141 and preset("t4").memory_gbs == 320
    assert preset("rtx-3090").peak_gflops == pytest.approx(35581, abs=1)
    assert preset("jetson-agx-orin").peak_gflops == pytest.approx(5325, abs=1)


@pytest.mark.parametrize(
    ("name", "key"),
    [("jetson-nano", "jetson-nano"), ("Jetson_Nano", "jetson-nano"), ("nano", "jetson-nano"), ("T4", "t4"),
     ("xavier_nx", "jetson-xavier-nx"), ("RTX 4090", "rtx-4090"), ("pi5", "raspberry-pi-5"), ("th1520", "licheepi-4a")],
)  # fmt: skip
def test_lookup_by_key_alias_or_spelling(name, key):
    assert preset(name).key == key
    assert preset(preset(name)) is preset(name)


def test_unknown_names_list_the_known_presets():
    with pytest.raises(UnknownHardwareError) as caught:
        preset("jetson-nanoo")
    message = str(caught.value)
    assert "unknown hardware preset 'jetson-nanoo'" in message
    assert all(key in message for key in (*DEVICES, *SERVERS))
    with pytest.raises(KeyError, match="'t4' is a server preset, not a device"):
        preset("t4", role="device")
    with pytest.raises(UnknownHardwareError, match="known radios: wifi, lte"):
        radio("5g")


def test_radio_energy_per_byte_from_the_power_model():
    wifi, lte = RADIOS["wifi"], RADIOS["lte"]
    assert radio("Wi-Fi") is wifi and radio("LTE") is lte
    # 283.17 mW per Mbit/s is 283.17 mJ per Mbit: 8e-6 Mbit per byte.
    assert wifi.up_j_per_byte == pytest.approx(0.28317 * 8e-6)
    assert lte.up_j_per_byte > wifi.up_j_per_byte and lte.active_w > wifi.active_w
    assert "Huang" in wifi.source and "Huang" in lte.source


def test_roofline_takes_the_larger_of_compute_and_memory_plus_launches():
    hw = preset("jetson-xavier-nx")
    size = 4_000_000
    memory = 3 * (2 * size) / (MEMORY_FRACTION * hw.memory_gbs * 1e9)
    assert node_seconds(1e3, 2 * size, False, hw) == pytest.approx(memory + 2 * hw.launch_s)
    assert node_seconds(1e3, 2 * size, False, hw, training=False) == pytest.approx(memory / 3 + hw.launch_s)
    flops = 50e9
    compute = 3 * flops / (COMPUTE_FRACTION * hw.peak_gflops * 1e9)
    assert node_seconds(flops, 5000, True, hw) == pytest.approx(compute + 3 * hw.launch_s)
    assert node_seconds(flops, 5000, True, hw, view=True) == 0.0


def test_views_are_recognised_from_the_estimator_s_fields():
    assert is_view({"op": "call_function", "target": "torch.flatten"})
    assert is_view({"op": "call_method", "target": "view"})
    assert is_view({"op": "call_module", "module_class": "Identity"})
    assert not is_view({"op": "call_module", "module_class": "ReLU"})
    assert not is_view({"op": "placeholder"})
