"""The README's demo: plan a split for the deployment you will have, then rehearse it here.

    python examples/cifar10_split.py                         # Jetson Nano + T4 over 50 Mbit/s Wi-Fi
    python examples/cifar10_split.py --target pi4-t4         # another deployment (--help lists them)
    python examples/cifar10_split.py --cut auto              # plan for this machine instead (measured)
    python examples/cifar10_split.py --server ws://HOST:8765 --cut features.7 --limit-batches 100

On one machine the device and the server are the same CPU, so the measured optimum is no split
at all. What a user wants to know is where to cut on the hardware they will deploy: by default
the demo plans for a named deployment (``--target``, default ``nano-t4``: a Jetson Nano and a T4
over 50 Mbit/s Wi-Fi) from the library's hardware presets (roofline estimate, nothing measured),
prints why that cut (the plan against its baselines, what crosses, that no raw input does, the
device's memory and energy), writes the plan picture, then trains exactly that cut on the
embedded server with the target's link emulated and reports the predicted against the measured
traffic per step.

``--cut auto`` measures this machine instead, and ``--cut NAME`` trains a cut of your choosing.
The model is MobileNetV2 by default (``--model resnet18|vgg16|alexnet`` for the others); every
option of ``examples/_cifar.py`` works here (``--help`` lists them). The demo trains and
validates on 20 batches (``--limit-batches``). Real CIFAR-10 is read from ``--data-dir`` when
it is there; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

try:
    from examples._cifar import RunResult, format_mib, parse_args, run
except ModuleNotFoundError:  # started as `python examples/cifar10_split.py`: examples/ is the import root
    from _cifar import RunResult, format_mib, parse_args, run

DEMO_DEFAULTS = ("--limit-batches", "20")


@dataclass(frozen=True)
class Target:
    """A deployment to plan for: a device preset, a server preset, the link between them, the radio."""

    device: str
    server: str
    link: str
    radio: str
    story: str


TARGETS = {
    "nano-t4": Target("jetson-nano", "t4", "50mbit,5ms", "wifi", "a Jetson Nano and a T4 over 50 Mbit/s Wi-Fi"),
    "pi4-t4": Target("raspberry-pi-4", "t4", "50mbit,5ms", "wifi", "a Raspberry Pi 4 and a T4 over 50 Mbit/s Wi-Fi"),
    "licheepi-3090": Target(
        "licheepi-4a", "rtx-3090", "100mbit,2ms", "wifi", "a LicheePi 4A and an RTX 3090 desktop over 100 Mbit/s"
    ),
    "orin-l4": Target("jetson-agx-orin", "l4", "200mbit,5ms", "wifi", "a Jetson AGX Orin and an L4 over 200 Mbit/s"),
    "phone-a10-lte": Target(
        "phone", "a10", "10mbit/40mbit,40ms", "lte", "a phone-class SoC and an A10 over LTE (10 Mbit/s up)"
    ),
}
MODELS = {
    "mobilenetv2": ("cifar10_mobilenetv2", "CifarMobileNetV2"),
    "resnet18": ("cifar10_resnet18", "CifarResNet18"),
    "vgg16": ("cifar10_vgg16", "CifarVGG16"),
    "alexnet": ("cifar10_alexnet", "CifarAlexNet"),
}


def _model_class(name: str) -> type:
    script, cls = MODELS[name]
    try:
        module = importlib.import_module(f"examples.{script}")
    except ModuleNotFoundError:  # examples/ is the import root
        module = importlib.import_module(script)
    return getattr(module, cls)


def _demo_options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The demo's own options; the rest go to the CIFAR examples' parser."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--target", choices=tuple(TARGETS), default="nano-t4")
    parser.add_argument("--model", choices=tuple(MODELS), default="mobilenetv2")
    parser.add_argument("--cut", default="target")
    parser.add_argument("--picture", type=Path, default=None)
    parser.add_argument("--objective", choices=("time", "energy"), default="time")
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> RunResult:
    """Plan for the target (or measure, or take the given cut), train, report; options in ``argv`` win."""
    given = list(sys.argv[1:] if argv is None else argv)
    if "-h" in given or "--help" in given:
        _help()
    demo, rest = _demo_options([*DEMO_DEFAULTS, *given])
    cut = "auto" if demo.cut == "target" else demo.cut
    args = parse_args([*rest, "--cut", cut], __doc__.splitlines()[0], default_lr=0.05)
    model_cls = _model_class(demo.model)
    if demo.cut != "target":
        return run(model_cls, args)
    target = TARGETS[demo.target]
    options = _plan_for_target(model_cls, args, demo, target)
    result = run(model_cls, args, strategy_options=options)
    _report_traffic(result)
    return result


def _help() -> None:
    print(__doc__)
    print("demo options: --target " + "|".join(TARGETS) + " (default nano-t4), --model " + "|".join(MODELS))
    print("  --cut target|auto|NAME (default target), --picture FILE.png, --objective time|energy")
    for key, target in TARGETS.items():
        print(f"  {key:14s} {target.story}: {target.device} + {target.server}, link {target.link}, {target.radio}")
    raise SystemExit(0)


def _plan_for_target(model_cls: type, args: argparse.Namespace, demo: argparse.Namespace, target: Target) -> dict:
    """Plan the model for ``target``, print why, draw the picture; the strategy options that train that plan."""
    from lightning_split import Link
    from lightning_split.costs.estimate import estimate_profile
    from lightning_split.graph.capture import trace_module
    from lightning_split.planning.energy import EnergyModel
    from lightning_split.plot import plot_plan
    from lightning_split.report import plan_outcome

    link = Link.parse(target.link)
    print(f"target {demo.target}: {target.story} ({target.device} + {target.server}, link {link.describe()})")
    model = model_cls(lr=args.lr, weight_decay=args.weight_decay)
    example = torch.randn(args.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    profile = estimate_profile(trace_module(model, (example,)), link, device=target.device, server=target.server)
    energy = EnergyModel.for_device(target.device, target.radio)
    pins = private_input_pins(profile)
    outcome = plan_outcome(profile, objective=demo.objective, energy=energy, pin_device=pins)
    title = f"{model_cls.__name__} on {demo.target}"
    print(outcome.render(title))
    print(privacy_text(profile, outcome.plan.device))
    print(leaking_baselines_text(profile))
    picture = demo.picture or Path(f"plan_{demo.target}.png")
    written = plot_plan(
        profile, outcome.plan, picture, outcome.baselines, title, found=outcome.resources, pin_device=pins
    )
    print(f"wrote the plan picture to {written}")
    args.link = args.link or target.link  # the emulated link limit: the target's unless --link says otherwise
    print(f"training that plan on the embedded server, the link emulated at {args.link}")
    return {
        "costs": "estimate",
        "costs_options": {"device": target.device, "server": target.server},
        "plan_link": link,
        "pin_device": pins,
        "objective": demo.objective,
        "energy": energy,
    }


def private_input_pins(profile: Any) -> list[str]:
    """The nodes that consume raw data (the inputs, or values computed from them without parameters).

    Pinned to the device, they keep every raw tensor on it: nothing the server receives was
    computed without the device's own parameters (``lightning_split.planning.constraints``).
    """
    from lightning_split.planning.constraints import raw_nodes

    raw = set(raw_nodes(profile))
    return [node.name for node in profile.nodes if node.name not in raw and raw.intersection(node.inputs)]


def privacy_text(profile: Any, device: Sequence[str]) -> str:
    """One line saying that no raw input crosses, and what the device keeps."""
    from lightning_split.planning.constraints import private_input_violations, raw_nodes

    leaks = private_input_violations(profile, device)
    if leaks:
        return "raw data crosses: " + ", ".join(f"{source} -> {consumer}" for source, consumer in leaks)
    raw = raw_nodes(profile)
    return (
        f"no raw input crosses: {', '.join(raw)} {'stays' if len(raw) == 1 else 'stay'} on the device, and every "
        "tensor sent was computed with the device's own parameters"
    )


def leaking_baselines_text(profile: Any) -> str:
    """Which baselines would send raw data (the private-input rule rules them out; the plan obeys it)."""
    from lightning_split.planning.constraints import private_input_violations
    from lightning_split.planning.planner import best_layerwise, server_only

    leaking = [
        label
        for label, place in (("server only", server_only), ("best layerwise", best_layerwise))
        if private_input_violations(profile, place(profile).device)
    ]
    if not leaking:
        return "every baseline keeps the raw inputs on the device too"
    return f"{' and '.join(leaking)} would send the raw inputs to the server (the plan keeps them on the device)"


def _report_traffic(result: RunResult) -> None:
    """Predicted bytes per step of the trained plan against what the last step sent and received."""
    placement = result.strategy.plan
    from lightning_split.planning.energy import crossing_bytes

    predicted = (
        0 if placement is None or placement.plan is None else crossing_bytes(placement.profile, placement.plan.device)
    )
    if not predicted or not result.traffic:
        print("traffic: none (the plan runs everything on the device)")
        return
    up, down = result.traffic["split/bytes_up"], result.traffic["split/bytes_down"]
    print(f"trained cut: {', '.join(placement.spec.cut)}")
    print(
        f"traffic per step: predicted {format_mib(predicted)} up and {format_mib(predicted)} down; "
        f"measured {format_mib(up)} up and {format_mib(down)} down "
        f"({up / predicted:.3f}x and {down / predicted:.3f}x of the prediction; "
        "the rest is message headers and control requests)"
    )


if __name__ == "__main__":
    main()
