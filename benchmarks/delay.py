"""Training-delay benchmark: predicted step time of the optimal split against the classic partitioners.

For Jetson-class devices paired with GPU edge servers, over uplinks of 1 to 1000 Mbit/s, it
computes the predicted training step time ``T`` (``docs/cost-model.md``: forward + backward
on both sides, activations up and their gradients down, two round trips) of:

- ``optimal``: the exact minimum cut of :func:`lightning_split.planning.planner.plan` (``blockwise``),
- ``device_only`` and ``server_only``,
- ``best_layerwise``: the best single split point of the graph order under the training costs,
  the Neurosurgeon-style chain partition (Kang et al., ASPLOS 2017),
- ``dads_inference``: the placement an exact DAG min cut picks from *inference* costs (forward
  only, activations sent one way, one round trip), as DADS (Hu et al., INFOCOM 2019) models
  it, then evaluated under the training costs,
- ``layerwise_inference``: the same for the single-split-point partition,

and the reduction ``1 - T_optimal / T_baseline`` against each. The optimum is exact on the
cost graph, so against an exact DAG min cut fed the *same training costs* the reduction is zero
by construction: the gain over DADS can only come from DADS optimising another objective
(inference), which is what ``dads_inference`` measures.

Models (torchvision, traced with :func:`lightning_split.graph.capture.trace_module` at the training
batch): ResNet-18 (CIFAR stem: 3x3 conv, no max pool), VGG-16 with batch norm (torchvision
features, one 512-to-10 classifier as in CIFAR VGGs), an AlexNet-style CIFAR net (five 3x3
convs, three fully connected layers, the layout of Krizhevsky et al. 2012) and MobileNetV2 at
3x32x32, batch 64; AlexNet, ResNet-50, GoogLeNet, Inception-v3 (299x299) and DenseNet-121 at
3x224x224, batch 32.

Link: uplink 1 to 1000 Mbit/s, downlink ``--down-multiple`` times the uplink (default 1:
equal, as on Ethernet or a symmetric Wi-Fi link), round-trip time ``--rtt-ms`` (default 5 ms,
a one-hop Wi-Fi edge link).

Hardware: the library's presets (:mod:`lightning_split.planning.hardware`, every figure with its
source): Jetson Nano, TX2, Xavier NX and AGX Orin devices; T4 and RTX 3090 servers; the H200 for
the calibration. fp32 peak from the datasheets (cores x 2 FLOPs x max GPU clock where they give
those), DRAM bandwidth, and a launch cost per kernel:

=============== ============ ========== ============
class           fp32 GFLOP/s memory GB/s launch us
=============== ============ ========== ============
Jetson Nano     236          25.6       40
Jetson TX2      666          59.7       40
Jetson Xavier NX 845         51.2       30
Jetson AGX Orin 5325         204.8      20
T4              8141         320        15
RTX 3090        35581        936        15
=============== ============ ========== ============

Sustained fractions and launch costs are assumptions, checked against one measurement:
``--calibrate-cuda`` times each forward node and whole forward + backward steps on the local
GPU (fp32, TF32 off) and compares both cost models with the GPU's datasheet figures. On an H200
(67 TFLOP/s fp32, 4.8 TB/s) the forward nodes of over 0.2 ms (the large convolutions and matrix
products) ran at about a quarter of the fp32 peak, a tiny elementwise op cost 16-18 us per kernel
forward + backward (launch plus PyTorch's eager dispatch on the x86 host), and nodes without
FLOPs (normalisation, activations, pooling, concatenation) took 23-66% of the forward time.
Hence the presets' ``COMPUTE_FRACTION = 0.25`` of the fp32 peak (the FLOP model uses the same
sustained rate; the library's default of 50 GFLOP/s for a Nano is 21% of its peak),
``MEMORY_FRACTION = 0.7`` of the DRAM bandwidth (what STREAM-like copies reach), and 15 us per
kernel on the x86-hosted servers. The Jetsons dispatch from slower ARM cores (Cortex-A57 on Nano
and TX2, Carmel on Xavier NX, Cortex-A78AE on Orin), assumed 1.3 to 2.7 times slower; no Jetson
was measured.

Two node cost models (seconds of forward + backward for one batch, as ``docs/cost-model.md`` defines):

``flops``
    :func:`lightning_split.costs.estimate.estimate_profile` with ``device_gflops`` and
    ``server_gflops`` set to the presets' sustained rate (``COMPUTE_FRACTION`` x peak):
    ``max(10 us, 3 x work / rate)`` where ``work`` is the forward FLOPs of ``FlopCounterMode`` or
    one per output element. It makes elementwise and normalisation nodes nearly free, although
    on real GPUs they are memory bound.
``roofline``
    :func:`lightning_split.planning.roofline.node_seconds`, the library's roofline:
    ``max(3 x work / (COMPUTE_FRACTION x peak), 3 x bytes / (MEMORY_FRACTION x bandwidth)) +
    kernels x launch``. ``bytes`` = input tensors + output tensor + parameters: the forward
    reads the inputs and parameters and writes the output; the backward reads the output
    gradient twice (input and weight gradients), the saved inputs and the parameters and writes
    the input and parameter gradients, about twice the forward's traffic. ``kernels`` is 3 for a
    node with parameters (forward, input gradient, weight gradient), 2 otherwise. Views
    (flatten, reshape, getitem, identity) move no data and cost nothing. The optimiser step is
    left out (``docs/cost-model.md`` costs forward + backward only).

Inference costs (for the DADS- and Neurosurgeon-style baselines): the forward terms only (a
third of the work and traffic, one kernel) and a link that charges ``out_bytes / uplink`` per
crossing tensor (downlink infinite: no gradient comes back) with one round trip.

Traced profiles are cached under ``benchmarks/out/cache`` (keyed by the model, batch, torch
and torchvision versions and the tracing sources), as a profile estimated at 1 GFLOP/s with
no backward and no floor: forward FLOPs, bytes and node kinds, independent of hardware and link.

Usage::

    python benchmarks/delay.py [--quick] [--publish] [--out benchmarks/out/delay.json] [--charts benchmarks/out]
    python benchmarks/delay.py --calibrate-cuda [--models resnet50,...] --out benchmarks/out/delay_calibration.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from _common import ROOT, machine_info, render_table, trace_sources

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_split.planning.hardware import COMPUTE_FRACTION, MEMORY_FRACTION, Hardware, preset
from lightning_split.planning.planner import best_layerwise, device_only, plan, server_only, step_time
from lightning_split.planning.profile import Link, NodeCost, Profile
from lightning_split.planning.roofline import is_view as is_view_node
from lightning_split.planning.roofline import node_seconds

BANDWIDTHS_MBPS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
QUICK_BANDWIDTHS_MBPS = (1.0, 10.0, 100.0, 1000.0)
RTT_MS = 5.0
DOWN_MULTIPLE = 1.0
FLOP_FRACTION = COMPUTE_FRACTION  # the FLOP model runs at the presets' sustained rate
TOLERANCE = 1e-9  # relative slack when checking that the optimum is not worse than a baseline
DEFAULT_OUT = ROOT / "benchmarks" / "out" / "delay.json"
DEFAULT_CHARTS = ROOT / "benchmarks" / "out"
DEFAULT_CACHE = ROOT / "benchmarks" / "out" / "cache"
RESULTS_DIR = ROOT / "benchmarks" / "results"
BASELINES = ("device_only", "server_only", "best_layerwise", "layerwise_inference", "dads_inference")
COST_MODELS = ("roofline", "flops")


# ----------------------------------------------------------------------------------------------
# Hardware.


# The library's presets under the short names the published results use ("nano/t4").
HARDWARE: dict[str, Hardware] = {
    short: preset(key)
    for short, key in (
        ("nano", "jetson-nano"),
        ("tx2", "jetson-tx2"),
        ("xavier_nx", "jetson-xavier-nx"),
        ("agx_orin", "jetson-agx-orin"),
        ("t4", "t4"),
        ("rtx3090", "rtx-3090"),
    )
}
PAIRS = (("nano", "t4"), ("tx2", "t4"), ("xavier_nx", "t4"), ("agx_orin", "t4"), ("agx_orin", "rtx3090"))
QUICK_PAIRS = (("nano", "t4"), ("agx_orin", "rtx3090"))
CHART_PAIR = ("nano", "t4")


def pair_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}/{pair[1]}"


# ----------------------------------------------------------------------------------------------
# Models.


@dataclass(frozen=True)
class Workload:
    """A model to train: its name, how to build it, and the training batch's shape."""

    name: str
    build: Callable[[], Any]
    input_shape: tuple[int, int, int, int]


def _resnet18_cifar() -> Any:
    import torchvision
    from torch import nn

    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _vgg16_cifar() -> Any:
    import torchvision
    from torch import nn

    return nn.Sequential(torchvision.models.vgg16_bn().features, nn.Flatten(), nn.Linear(512, 10))


def _alexnet_cifar() -> Any:
    from torch import nn

    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *conv(3, 64), nn.MaxPool2d(2), *conv(64, 192), nn.MaxPool2d(2),
        *conv(192, 384), *conv(384, 256), *conv(256, 256), nn.MaxPool2d(2), nn.Flatten(),
        nn.Dropout(), nn.Linear(256 * 4 * 4, 4096), nn.ReLU(inplace=True),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 10),
    )  # fmt: skip


def _torchvision(name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


WORKLOADS = {
    w.name: w
    for w in (
        Workload("resnet18_cifar", _resnet18_cifar, (64, 3, 32, 32)),
        Workload("vgg16_cifar", _vgg16_cifar, (64, 3, 32, 32)),
        Workload("alexnet_cifar", _alexnet_cifar, (64, 3, 32, 32)),
        Workload("mobilenet_v2_cifar", _torchvision("mobilenet_v2", num_classes=10), (64, 3, 32, 32)),
        Workload("alexnet", _torchvision("alexnet"), (32, 3, 224, 224)),
        Workload("resnet50", _torchvision("resnet50"), (32, 3, 224, 224)),
        Workload("googlenet", _torchvision("googlenet", aux_logits=False, init_weights=False), (32, 3, 224, 224)),
        Workload("inception_v3", _torchvision("inception_v3", aux_logits=False, init_weights=False), (32, 3, 299, 299)),
        Workload("densenet121", _torchvision("densenet121"), (32, 3, 224, 224)),
    )
}
QUICK_WORKLOADS = ("resnet18_cifar", "alexnet_cifar")


def trace_workload(workload: Workload, device: str = "cpu") -> tuple[Any, Any, Any]:
    """Build the model (seeded, train mode) on ``device`` and trace it on a seeded batch: (traced, module, batch)."""
    import torch

    from lightning_split.graph.capture import trace_module

    torch.manual_seed(0)  # weights change neither FLOPs nor shapes; seeded so reruns are identical
    module = workload.build().train().to(device)
    example = torch.randn(workload.input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    return trace_module(module, (example,)), module, example


def unit_from_traced(traced: Any, name: str) -> Profile:
    """The traced model as a profile at 1 GFLOP/s, forward only, no floor.

    Each node's ``device_s`` is then its forward work in GFLOP (``FlopCounterMode`` FLOPs, or
    one per output element), the quantity both cost models scale. Call-module nodes carry
    their module class as the extra field ``module_class`` (the estimator writes it).
    """
    from lightning_split.costs.estimate import estimate_profile

    profile = estimate_profile(traced, Link.from_mbps(100.0), 1.0, 1.0, backward_factor=0.0, min_node_s=0.0)
    profile.extra["model"] = name
    return profile


def unit_profile(workload: Workload, cache_dir: Path | None) -> tuple[Profile, float | None]:
    """:func:`unit_from_traced` of the workload traced on the CPU, cached; and the tracing seconds (None if cached)."""
    import torch
    import torchvision

    sources = trace_sources()
    key = json.dumps(["delay-unit/1", workload.name, workload.input_shape, torch.__version__, torchvision.__version__])
    digest = hashlib.sha256(key.encode() + sources).hexdigest()[:16]
    cached = cache_dir / f"delay-{workload.name}-{digest}.json" if cache_dir is not None else None
    if cached is not None and cached.exists():
        return Profile.load(cached), None

    started = time.perf_counter()
    traced, _, _ = trace_workload(workload)
    profile = unit_from_traced(traced, workload.name)
    traced_s = time.perf_counter() - started
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        profile.save(cached)
    return profile, traced_s


# ----------------------------------------------------------------------------------------------
# Node cost models.


def is_view(node: NodeCost) -> bool:
    """Whether a node only re-describes its input (no kernel, no data moved): the library's rule."""
    return is_view_node(node.extra)


class CostModel(Protocol):
    """Seconds of one node on one accelerator, for training (forward + backward) or inference (forward)."""

    name: str

    def seconds(self, node: NodeCost, in_bytes: int, hw: Hardware, training: bool) -> float: ...


class FlopCost:
    """The library's FLOP-only estimate: ``max(min_node_s, (1 + 2) x work / rate)``, forward only for inference."""

    name = "flops"

    def __init__(self, min_node_s: float | None = None) -> None:
        from lightning_split.costs.estimate import DEFAULT_MIN_NODE_S

        self.min_node_s = DEFAULT_MIN_NODE_S if min_node_s is None else min_node_s

    def seconds(self, node: NodeCost, in_bytes: int, hw: Hardware, training: bool) -> float:
        work_gflop = node.device_s * (3.0 if training else 1.0)  # unit profile: forward GFLOP
        return max(self.min_node_s, work_gflop / hw.sustained_gflops)


class RooflineCost:
    """The library's roofline (:func:`lightning_split.planning.roofline.node_seconds`) on a unit profile node."""

    name = "roofline"

    def seconds(self, node: NodeCost, in_bytes: int, hw: Hardware, training: bool) -> float:
        param_bytes = int(node.extra.get("param_bytes", 0))
        bytes_moved = in_bytes + node.out_bytes + param_bytes
        work = node.device_s * 1e9  # unit profile: forward GFLOP
        return node_seconds(work, bytes_moved, param_bytes > 0, hw, training, view=is_view(node))


COST_MODEL_TYPES: dict[str, Callable[[], CostModel]] = {"roofline": RooflineCost, "flops": FlopCost}


def costed_profile(unit: Profile, model: CostModel, device: Hardware, server: Hardware, training: bool) -> Profile:
    """The unit profile with node seconds of ``model`` on ``device`` and ``server`` (the link is set later)."""
    sizes = {node.name: node.out_bytes for node in unit.nodes}
    nodes = []
    for node in unit.nodes:
        if node.kind == "input":
            nodes.append(NodeCost(node.name, node.kind, node.inputs, node.out_bytes, 0.0, 0.0, node.extra))
            continue
        in_bytes = sum(sizes[name] for name in dict.fromkeys(node.inputs))
        nodes.append(
            NodeCost(
                node.name,
                node.kind,
                node.inputs,
                node.out_bytes,
                model.seconds(node, in_bytes, device, training),
                model.seconds(node, in_bytes, server, training),
                node.extra,
            )
        )
    extra = {**unit.extra, "cost_model": model.name, "device": device.key, "server": server.key, "training": training}
    return Profile(nodes, list(unit.outputs), unit.link, extra)


def training_link(up_mbps: float, down_multiple: float, rtt_ms: float) -> Link:
    """Activations up, gradients down, two round trips per step (the planner adds them)."""
    return Link.from_mbps(up_mbps, up_mbps * down_multiple, rtt_ms)


def inference_link(up_mbps: float, rtt_ms: float) -> Link:
    """What an inference partitioner sees: tensors sent up once, nothing back, one round trip in all."""
    return Link(up_mbps * 1e6 / 8, math.inf, rtt_ms / 1e3 / 2)


# ----------------------------------------------------------------------------------------------
# Evaluation.


def evaluate(train: Profile, infer: Profile) -> dict[str, Any]:
    """Optimal and baseline step times of one profile over one link, with the cuts and reductions.

    ``train`` and ``infer`` are the same graph with training and inference costs and links; the
    inference partitioners' placements are re-evaluated on ``train``.
    """
    optimal = plan(train, "blockwise")
    placements = {
        "device_only": device_only(train).device,
        "server_only": server_only(train).device,
        "best_layerwise": best_layerwise(train).device,
        "layerwise_inference": best_layerwise(infer).device,
        "dads_inference": plan(infer, "blockwise").device,
    }
    times = {key: step_time(train, device).total for key, device in placements.items()}
    t_opt = optimal.predicted_step_s
    return {
        "optimal_s": t_opt,
        "breakdown": optimal.breakdown.to_json(),
        "baselines_s": times,
        "reduction": {key: 1.0 - t_opt / value if value > 0 else 0.0 for key, value in times.items()},
        "not_worse": all(t_opt <= value * (1 + TOLERANCE) for value in times.values()),
        "cut": list(optimal.cut),
        "device_nodes": len(optimal.device),
        "baseline_device_nodes": {key: len(device) for key, device in placements.items()},
    }


def run_grid(
    units: dict[str, Profile],
    pairs: Sequence[tuple[str, str]],
    bandwidths: Sequence[float],
    down_multiple: float,
    rtt_ms: float,
) -> list[dict[str, Any]]:
    """One row per cost model, device/server pair, model and uplink bandwidth."""
    rows = []
    for cost_name in COST_MODELS:
        model = COST_MODEL_TYPES[cost_name]()
        for pair in pairs:
            device, server = HARDWARE[pair[0]], HARDWARE[pair[1]]
            for name, unit in units.items():
                train = costed_profile(unit, model, device, server, training=True)
                infer = costed_profile(unit, model, device, server, training=False)
                for mbps in bandwidths:
                    row = evaluate(
                        train.with_link(training_link(mbps, down_multiple, rtt_ms)),
                        infer.with_link(inference_link(mbps, rtt_ms)),
                    )
                    rows.append({"cost_model": cost_name, "pair": pair_name(pair), "model": name,
                                 "uplink_mbps": mbps, **row})  # fmt: skip
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best and median reduction against each baseline, per cost model, overall and per pair."""

    def stats(selected: list[dict[str, Any]]) -> dict[str, Any]:
        out = {}
        for key in BASELINES:
            values = [r["reduction"][key] for r in selected]
            best = max(selected, key=lambda r: r["reduction"][key])
            out[key] = {
                "best": best["reduction"][key],
                "best_at": {"pair": best["pair"], "model": best["model"], "uplink_mbps": best["uplink_mbps"]},
                "median": statistics.median(values),
                "share_positive": sum(v > 1e-6 for v in values) / len(values),
            }
        return out

    summary: dict[str, Any] = {}
    for cost_name in COST_MODELS:
        selected = [r for r in rows if r["cost_model"] == cost_name]
        if not selected:
            continue
        pairs = dict.fromkeys(r["pair"] for r in selected)
        summary[cost_name] = {
            "all": stats(selected),
            "by_pair": {p: stats([r for r in selected if r["pair"] == p]) for p in pairs},
        }
    return summary


# ----------------------------------------------------------------------------------------------
# Pipelined micro-batches (issue 12): the pipelined optimum against the sequential one.

PIPELINED_MICRO_BATCHES = (1, 2, 4, 8, 16)


def pipelined_grid(
    units: dict[str, Profile],
    pairs: Sequence[tuple[str, str]],
    bandwidths: Sequence[float],
    down_multiple: float,
    rtt_ms: float,
    cost_name: str = "roofline",
    private_inputs: bool = False,
) -> list[dict[str, Any]]:
    """One row per pair, model and uplink: ``T_M`` of the pipelined optimum (M auto) against T_1 baselines.

    The pipelined optimum is ``best_micro_batches`` over :data:`PIPELINED_MICRO_BATCHES`
    (``lightning_split.planning.pipelined_planner``); the sequential optimum, the best
    layer-wise split and the inference-planned cuts (DADS-style) run with M=1. With
    ``private_inputs`` the two optima keep the raw inputs on the device (``SplitStrategy``'s
    default); the layer-wise and DADS-style baselines stay unconstrained, as published.
    ``intermediate`` says whether the pipelined optimum keeps nodes on both sides.
    """
    from lightning_split.planning.pipelined_planner import best_micro_batches, sequential_optimum

    model = COST_MODEL_TYPES[cost_name]()
    rows = []
    for pair in pairs:
        device, server = HARDWARE[pair[0]], HARDWARE[pair[1]]
        for name, unit in units.items():
            train = costed_profile(unit, model, device, server, training=True)
            infer = costed_profile(unit, model, device, server, training=False)
            for mbps in bandwidths:
                profile = train.with_link(training_link(mbps, down_multiple, rtt_ms))
                piped = best_micro_batches(profile, candidates=PIPELINED_MICRO_BATCHES, private_inputs=private_inputs)
                sequential = sequential_optimum(profile, private_inputs=private_inputs).predicted_step_s
                inference = infer.with_link(inference_link(mbps, rtt_ms))
                baselines = {
                    "sequential_optimum": sequential,
                    "best_layerwise": step_time(profile, best_layerwise(profile).device).total,
                    "dads_inference": step_time(profile, plan(inference, "blockwise").device).total,
                }
                t = piped.predicted_step_s
                rows.append({
                    "cost_model": cost_name, "pair": pair_name(pair), "model": name, "uplink_mbps": mbps,
                    "private_inputs": private_inputs, "pipelined_s": t, "micro_batches": piped.micro_batches,
                    "exact": piped.exact,
                    "intermediate": bool(piped.server) and any(profile.node(n).kind != "input" for n in piped.device),
                    "cut": list(piped.cut), "baselines_s": baselines,
                    "reduction": {k: 1.0 - t / v if v > 0 else 0.0 for k, v in baselines.items()},
                })  # fmt: skip
    return rows


def pipelined_table(rows: list[dict[str, Any]]) -> str:
    """Per pair: where pipelining moves the optimum to an intermediate cut and by how much it beats M=1."""
    header = ["pair", "raw inputs", "rows", "M>1 chosen", "intermediate cut", "vs sequential best/median",
              "vs best_layerwise best/median", "vs dads_inference best/median"]  # fmt: skip
    out = []
    for pair, private in dict.fromkeys((r["pair"], r.get("private_inputs", False)) for r in rows):
        sel = [r for r in rows if r["pair"] == pair and r.get("private_inputs", False) == private]

        def cell(key: str, sel: list[dict[str, Any]] = sel) -> str:
            values = [r["reduction"][key] for r in sel]
            return f"{_pct(max(values))} / {_pct(statistics.median(values))}"

        out.append([pair, "on device" if private else "may cross", str(len(sel)),
                    str(sum(r["micro_batches"] > 1 for r in sel)),
                    str(sum(r["intermediate"] for r in sel)), cell("sequential_optimum"), cell("best_layerwise"),
                    cell("dads_inference")])  # fmt: skip
    return render_table(header, out, left=1)


# ----------------------------------------------------------------------------------------------
# Output.


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}" if seconds >= 1 else f"{seconds * 1e3:.1f}"


def summary_table(summary: dict[str, Any]) -> str:
    """Best / median reduction of the optimum against each baseline, per cost model and pair."""
    header = ["cost model", "pair", *(f"vs {key}" for key in BASELINES)]
    rows = []
    for cost_name, by_cost in summary.items():
        for pair, stats in [("all", by_cost["all"]), *by_cost["by_pair"].items()]:
            cells = [f"{_pct(stats[k]['best'])} / {_pct(stats[k]['median'])}" for k in BASELINES]
            rows.append([cost_name, pair, *cells])
    return render_table(header, rows, left=2)


def model_table(rows: list[dict[str, Any]], cost_name: str, pair: str) -> str:
    """Per model, over the bandwidths: the optimum's step time range and its best / median reductions."""
    header = ["model", "T* ms (1 -> 1000 Mbit/s)", "vs layerwise", "vs dads_inference", "vs server_only", "cuts"]
    table = []
    selected = [r for r in rows if r["cost_model"] == cost_name and r["pair"] == pair]
    for model in dict.fromkeys(r["model"] for r in selected):
        mine = sorted((r for r in selected if r["model"] == model), key=lambda r: r["uplink_mbps"])
        cells = []
        for key in ("best_layerwise", "dads_inference", "server_only"):
            values = [r["reduction"][key] for r in mine]
            cells.append(f"{_pct(max(values))} / {_pct(statistics.median(values))}")
        cuts = len({tuple(r["cut"]) for r in mine})
        table.append([model, f"{_ms(mine[0]['optimal_s'])} -> {_ms(mine[-1]['optimal_s'])}", *cells, str(cuts)])
    return render_table(header, table)


_STYLES = {
    "device_only": ("device only", "tab:gray", ":"),
    "server_only": ("server only", "tab:green", ":"),
    "best_layerwise": ("best layer-wise (Neurosurgeon-style)", "tab:orange", "--"),
    "dads_inference": ("DAG min cut on inference costs (DADS-style)", "tab:purple", "-."),
}


def step_time_chart(rows: list[dict[str, Any]], cost_name: str, pair: str, path: Path) -> None:
    """One panel per model: step time against uplink, optimum and baselines, cut changes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selected = [r for r in rows if r["cost_model"] == cost_name and r["pair"] == pair]
    models = list(dict.fromkeys(r["model"] for r in selected))
    cols = math.ceil(math.sqrt(len(models)))
    rows_n = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 2.6 * rows_n + 0.6), squeeze=False)
    for ax, model in zip(axes.flat, models):
        mine = sorted((r for r in selected if r["model"] == model), key=lambda r: r["uplink_mbps"])
        x = [r["uplink_mbps"] for r in mine]
        ax.plot(x, [r["optimal_s"] for r in mine], "-", color="tab:blue", label="optimal (min cut)", lw=3, alpha=0.5)
        for key, (label, color, style) in _STYLES.items():  # drawn over the optimum, which they often equal
            ax.plot(x, [r["baselines_s"][key] for r in mine], style, color=color, label=label, lw=1.2)
        changed = [i for i in range(1, len(mine)) if mine[i]["cut"] != mine[i - 1]["cut"]]
        for i in changed:
            ax.axvline(math.sqrt(x[i - 1] * x[i]), color="tab:blue", lw=0.6, alpha=0.4)
        ax.plot(x, [r["optimal_s"] for r in mine], "o", color="tab:blue", ms=3)
        ax.plot([x[i] for i in changed], [mine[i]["optimal_s"] for i in changed], "D", color="tab:red", ms=4,
                label="cut changes")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(model, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes.flat[len(models) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("uplink Mbit/s", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("step time s", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    device, server = pair.split("/")
    fig.suptitle(
        f"Predicted training step time, {HARDWARE[device].label} + {HARDWARE[server].label} server, {cost_name} costs",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def reduction_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Reduction against uplink, the maximum (top) and median (bottom) over the models; one column per baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("best_layerwise", "dads_inference", "server_only", "device_only")
    fig, axes = plt.subplots(2, len(keys), figsize=(13, 6.2), sharey=True, sharex=True)
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    colors = dict(zip(pairs, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")))
    for stat_row, (stat_name, stat) in zip(axes, (("maximum", max), ("median", statistics.median))):
        for ax, key in zip(stat_row, keys):
            for cost_name, style in (("roofline", "-"), ("flops", "--")):
                for pair in pairs:
                    mine = [r for r in rows if r["cost_model"] == cost_name and r["pair"] == pair]
                    x = sorted({r["uplink_mbps"] for r in mine})
                    y = [100 * stat([r["reduction"][key] for r in mine if r["uplink_mbps"] == b]) for b in x]
                    ax.plot(x, y, style, color=colors[pair], label=f"{pair} ({cost_name})", lw=1.3, marker="o", ms=2.5)
            ax.axhline(39, color="black", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_title(f"vs {_STYLES[key][0]}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
        stat_row[0].set_ylabel(f"{stat_name} over models, %", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("uplink Mbit/s", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.suptitle("Step-time reduction of the optimal split, 1 - T*/T (dotted: the published 39%)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Calibration on a CUDA GPU: the cost models against measured per-node and per-step times.

# H200 SXM: 132 SMs x 128 fp32 cores at 1.98 GHz (67 TFLOP/s fp32) and 4.8 TB/s HBM3e (the preset's
# sources); 15 us per launch like the other x86-hosted GPUs.
CALIBRATION_HARDWARE = preset("h200")
LARGE_NODE_S = 2e-4  # forward nodes above this are timed well clear of the per-node synchronisation cost
CALIBRATION_WORKLOADS = ("resnet18_cifar", "alexnet_cifar", "mobilenet_v2_cifar", "resnet50", "densenet121")


def _median_cuda_s(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    import torch

    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def measure_forward_nodes(traced: Any, example: Any, repeats: int = 7) -> dict[str, float]:
    """Median wall-clock seconds of each node's forward on the GPU, synchronised around every node.

    The time includes the Python and dispatcher work of the call as well as the kernels: that is
    what the roofline's launch term stands for.
    """
    import torch
    from torch import fx

    class Timer(fx.Interpreter):
        def __init__(self, gm: fx.GraphModule) -> None:
            super().__init__(gm)
            self.runs: dict[str, list[float]] = {}

        def run_node(self, n: fx.Node) -> Any:
            if n.op not in ("call_module", "call_function", "call_method"):
                return super().run_node(n)
            torch.cuda.synchronize()
            started = time.perf_counter()
            result = super().run_node(n)
            torch.cuda.synchronize()
            self.runs.setdefault(n.name, []).append(time.perf_counter() - started)
            return result

    timer = Timer(traced.graph_module)
    with torch.no_grad():
        for _ in range(3 + repeats):
            timer.run(example.clone())
    return {name: statistics.median(runs[3:]) for name, runs in timer.runs.items()}


def measure_step(module: Any, example: Any, repeats: int = 10) -> float:
    """Median seconds of one forward + backward of the whole module (no optimiser), synchronised."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        module(example).float().sum().backward()

    return _median_cuda_s(step, repeats)


def measure_launch_s(ops: int = 200, repeats: int = 10) -> float:
    """Seconds per kernel of a forward + backward chain of tiny elementwise ops: launch plus eager dispatch."""
    import torch

    x = torch.ones(256, device="cuda", requires_grad=True)

    def chain() -> None:
        y = x
        for _ in range(ops):
            y = y * 1.0001
        y.sum().backward()

    return _median_cuda_s(chain, repeats) / (2 * ops)  # one forward and one backward kernel per op


def _log_error_stats(predicted: list[float], measured: list[float]) -> dict[str, float]:
    errors = [abs(math.log10(max(p, 1e-9) / m)) for p, m in zip(predicted, measured)]
    logs_p = [math.log(max(p, 1e-9)) for p in predicted]
    logs_m = [math.log(m) for m in measured]
    return {
        "median_abs_log10_error": statistics.median(errors),
        "median_log10_ratio": statistics.median(math.log10(max(p, 1e-9) / m) for p, m in zip(predicted, measured)),
        "log_pearson": statistics.correlation(logs_p, logs_m) if len(set(logs_p)) > 1 else float("nan"),
    }


def calibrate(names: Sequence[str]) -> dict[str, Any]:
    """Both cost models on the local CUDA GPU against measured forward node times and step times (fp32, TF32 off)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    hw = CALIBRATION_HARDWARE
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "hardware": hw.to_json(), "models": {}}
    out["measured_launch_us"] = 1e6 * measure_launch_s()
    for name in names:
        print(f"calibrating {name} ...", file=sys.stderr, flush=True)
        traced, module, example = trace_workload(WORKLOADS[name], "cuda")
        unit = unit_from_traced(traced, name)
        forward = measure_forward_nodes(traced, example)
        step_s = measure_step(module, example)
        timed = [n for n in unit.nodes if n.name in forward and not is_view(n)]
        measured = [forward[n.name] for n in timed]
        large = [i for i, m in enumerate(measured) if m >= LARGE_NODE_S]
        compute_nodes = {n.name for n in timed if n.extra.get("flops")}
        row: dict[str, Any] = {
            "measured_forward_s": sum(forward.values()),
            "measured_step_s": step_s,
            "measured_share_without_flops": sum(forward[n] for n in forward if n not in compute_nodes)
            / sum(forward.values()),
        }
        for cost_name in COST_MODELS:
            model = COST_MODEL_TYPES[cost_name]()
            infer = costed_profile(unit, model, hw, hw, training=False)
            train = costed_profile(unit, model, hw, hw, training=True)
            predicted = [infer.node(n.name).device_s for n in timed]
            predicted_forward = sum(n.device_s for n in infer.nodes)
            row[cost_name] = {
                "predicted_forward_s": predicted_forward,
                "predicted_step_s": sum(n.device_s for n in train.nodes),
                "predicted_share_without_flops": sum(p for p, n in zip(predicted, timed) if n.name not in compute_nodes)
                / max(sum(predicted), 1e-12),
                **_log_error_stats(predicted, measured),
                "large_nodes": len(large),
                "large": _log_error_stats([predicted[i] for i in large], [measured[i] for i in large])
                if large
                else None,
            }
        out["models"][name] = row
    return out


def _err(stats: dict[str, float] | None) -> str:
    """Median absolute and (in brackets) signed log10 error of predicted over measured."""
    return "-" if stats is None else f"{stats['median_abs_log10_error']:.2f} ({stats['median_log10_ratio']:+.2f})"


def calibration_table(result: dict[str, Any]) -> str:
    header = ["model", "step ms", "flops pred", "roofline pred", "fwd ms", "flops pred", "roofline pred",
              "no-FLOP share", "flops", "roofline", "node err flops", "roofline", "large nodes", "err flops",
              "roofline"]  # fmt: skip
    rows = []
    for name, r in result["models"].items():
        f, o = r["flops"], r["roofline"]
        rows.append([
            name, f"{r['measured_step_s'] * 1e3:.2f}", f"{f['predicted_step_s'] * 1e3:.2f}",
            f"{o['predicted_step_s'] * 1e3:.2f}", f"{r['measured_forward_s'] * 1e3:.2f}",
            f"{f['predicted_forward_s'] * 1e3:.2f}", f"{o['predicted_forward_s'] * 1e3:.2f}",
            _pct(r["measured_share_without_flops"]), _pct(f["predicted_share_without_flops"]),
            _pct(o["predicted_share_without_flops"]),
            f"{f['median_abs_log10_error']:.2f}", f"{o['median_abs_log10_error']:.2f}", str(o["large_nodes"]),
            _err(f["large"]), _err(o["large"]),
        ])  # fmt: skip
    return render_table(header, rows)


def codec_rows(units: dict[str, Profile], bandwidths: Sequence[float], args: argparse.Namespace) -> int:
    """``--codecs``: each codec's delay saved and how far the optimum moves, and its accuracy cost on digits."""
    import codec_delay

    out = args.out.with_name("codecs.json")
    codec_delay.run(units, bandwidths, args.down_multiple, args.rtt_ms, out, seeds=2 if args.quick else 5)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid, print the tables, write JSON and charts; exit 1 if the optimum loses to a baseline."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two CIFAR models, two pairs, four bandwidths")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})")
    parser.add_argument("--charts", type=Path, default=DEFAULT_CHARTS, help="folder for delay_*.png")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where traced profiles are cached")
    parser.add_argument("--no-cache", action="store_true", help="trace every model again")
    parser.add_argument("--models", help=f"comma-separated models (default: all of {', '.join(WORKLOADS)})")
    parser.add_argument("--rtt-ms", type=float, default=RTT_MS, help=f"round-trip time (default {RTT_MS:g} ms)")
    parser.add_argument("--down-multiple", type=float, default=DOWN_MULTIPLE, help="downlink / uplink (default 1)")
    parser.add_argument("--publish", action="store_true", help="copy the charts to benchmarks/results/")
    parser.add_argument("--codecs", action="store_true", help="instead: the codec rows (benchmarks/codec_delay.py)")
    parser.add_argument(
        "--pipelined", action="store_true", help="also: the pipelined optimum (M auto) against M=1 (roofline costs)"
    )
    parser.add_argument(
        "--calibrate-cuda",
        action="store_true",
        help="instead: measure forward node and step times on the local CUDA GPU against both cost models",
    )
    args = parser.parse_args(argv)
    if args.calibrate_cuda:
        names = tuple(args.models.split(",")) if args.models else CALIBRATION_WORKLOADS
        result = {"benchmark": "delay-calibration", "machine": machine_info(("torch", "torchvision")),
                  **calibrate(names)}  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"{result['gpu']}: measured against predicted (ms); no-FLOP share: forward time in nodes without FLOPs;")
        print("node err: median |log10(predicted / measured)| of the forward node times")
        print(calibration_table(result))
        print(f"launch + dispatch per kernel (tiny elementwise chain, forward + backward): "
              f"{result['measured_launch_us']:.1f} us; assumed {CALIBRATION_HARDWARE.launch_s * 1e6:g} us")  # fmt: skip
        return 0

    started = time.perf_counter()
    names = QUICK_WORKLOADS if args.quick else tuple(WORKLOADS)
    if args.models:
        names = tuple(args.models.split(","))
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown model(s): {', '.join(sorted(unknown))}")
    pairs = QUICK_PAIRS if args.quick else PAIRS
    bandwidths = QUICK_BANDWIDTHS_MBPS if args.quick else BANDWIDTHS_MBPS

    units: dict[str, Profile] = {}
    models_info: dict[str, Any] = {}
    for name in names:
        print(f"tracing {name} ...", file=sys.stderr, flush=True)
        unit, traced_s = unit_profile(WORKLOADS[name], None if args.no_cache else args.cache)
        units[name] = unit
        models_info[name] = {
            "input_shape": list(WORKLOADS[name].input_shape),
            "nodes": len(unit.nodes),
            "forward_gflop": sum(n.device_s for n in unit.nodes if n.extra.get("flops")),
            "param_mb": sum(int(n.extra.get("param_bytes", 0)) for n in unit.nodes) / 1e6,
            "trace_s": traced_s,
        }

    if args.codecs:
        return codec_rows(units, bandwidths, args)
    rows = run_grid(units, pairs, bandwidths, args.down_multiple, args.rtt_ms)
    piped = []
    if args.pipelined:
        for private in (False, True):
            piped += pipelined_grid(units, pairs, bandwidths, args.down_multiple, args.rtt_ms, private_inputs=private)
    summary = summarise(rows)
    sound = all(r["not_worse"] for r in rows)

    args.charts.mkdir(parents=True, exist_ok=True)
    chart_pair = pair_name(CHART_PAIR if CHART_PAIR in pairs else pairs[0])
    charts = [args.charts / f"delay_step_time_{cost}.png" for cost in COST_MODELS] + [
        args.charts / "delay_reduction.png"
    ]
    for cost, path in zip(COST_MODELS, charts):
        step_time_chart(rows, cost, chart_pair, path)
    reduction_chart(rows, charts[-1])
    if args.publish:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        for path in charts:
            shutil.copyfile(path, RESULTS_DIR / path.name)

    total_s = time.perf_counter() - started
    report = {
        "benchmark": "delay",
        "quick": args.quick,
        "machine": machine_info(("torch", "torchvision", "networkx", "matplotlib")),
        "settings": {
            "uplinks_mbps": list(bandwidths),
            "down_multiple": args.down_multiple,
            "rtt_ms": args.rtt_ms,
            "flop_fraction": FLOP_FRACTION,
            "compute_fraction": COMPUTE_FRACTION,
            "memory_fraction": MEMORY_FRACTION,
            "pairs": [pair_name(p) for p in pairs],
            "hardware": {key: HARDWARE[key].to_json() for key in dict.fromkeys(k for p in pairs for k in p)},
            "baselines": list(BASELINES),
            "cost_models": list(COST_MODELS),
        },
        "models": models_info,
        "sound": sound,
        "total_s": total_s,
        "summary": summary,
        "charts": [str(path) for path in charts],
        "results": rows,
        "pipelined": piped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")

    print("Reduction of the optimal step time, 1 - T*/T_baseline: best / median over models and uplinks")
    print(summary_table(summary))
    for cost_name in COST_MODELS:
        print()
        print(f"{cost_name} costs, {chart_pair}: best / median reduction over the uplinks")
        print(model_table(rows, cost_name, chart_pair))
    print()
    print(f"uplinks {', '.join(f'{b:g}' for b in bandwidths)} Mbit/s, downlink x{args.down_multiple:g}, "
          f"rtt {args.rtt_ms:g} ms; cuts: distinct optimal cuts over the uplinks")  # fmt: skip
    if piped:
        print("\nPipelined optimum (M auto, roofline) against M=1 plans: reduction best / median")
        print(pipelined_table(piped))
    print(f"total {total_s:.0f} s; results in {args.out}; charts in {args.charts}")
    if not sound:
        print("error: the optimal plan is worse than a baseline on some row", file=sys.stderr)
    return 0 if sound else 1


if __name__ == "__main__":
    sys.exit(main())
