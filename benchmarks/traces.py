"""Changing networks: re-planning against a fixed plan, layer-wise splits and DADS-style cuts over bandwidth traces.

The published gain of optimal split training is "in dynamic edge networks". This benchmark
replays seeded Markov bandwidth traces, one link state per training step, and charges each
placement strategy the predicted step time ``T`` (``docs/cost-model.md``) of the placement it
holds at each step on that step's link, summed over the trace:

- ``oracle``: the optimal placement of every step, free of charge (a lower bound for the
  strategies that plan as ``SplitStrategy`` does: raw inputs kept on the device),
- ``replan/N``: the optimal plan for the current link every ``N`` steps (what
  ``SplitStrategy(replan_every=N)`` does), paying its planning time (measured here, each
  re-plan timed with ``time.perf_counter``) and, whenever the optimum moves, its migration as
  the runtime makes it (:mod:`lightning_split.planning.migration`): the old server part's
  parameters and optimizer state (``param_bytes x (1 + OPTIMIZER_SLOTS)``, Adam) home, the new
  one's out, over the link of that step, plus a round trip per side with a server part
  (``SplitStrategy(replan_every=N, replan_horizon=math.inf)``),
- ``replan/N aware``: the same, but a re-plan moves the boundary only when the predicted
  saving over the next ``N`` steps on the current link exceeds the migration it costs
  (``move_pays``: what ``SplitStrategy(replan_every=N)`` does by default),
- ``fixed``: the optimal plan for the first step's link, kept,
- ``layerwise/N`` and ``layerwise fixed``: the best single split point of the graph order
  (Neurosurgeon-style), re-chosen every ``N`` steps (paying migration) or kept,
- ``dads/N``: DADS-style inference cuts (Hu et al., INFOCOM 2019): the exact min cut of the
  *inference* cost graph (forward shares only, tensors sent up once, one round trip), re-cut
  every ``N`` steps as DADS re-partitions on bandwidth changes, evaluated on the training step,
- ``device only`` and ``server only``.

The optimal plans keep the raw inputs on the device, as ``SplitStrategy`` does by default
(``docs/cost-model.md`` section 1c); the layer-wise, DADS-style and server-only placements are
the unconstrained baselines of section 1, which may send the raw input (``server only`` always
does).

Link probes are not charged in the predicted part (the link of each step is taken as known);
the measured part includes them. Traces (``TRACES``): a Markov chain over link states, one
transition per step, staying in its state with probability ``stay`` and otherwise moving to a
neighbouring state (one up or one down, equally likely; the ends reflect). The states:

- ``wifi``: 5 / 20 / 50 / 100 Mbit/s symmetric, rtt 20 / 10 / 5 / 3 ms, ``stay`` 0.9
  (a device moving about an access point),
- ``lte``: uplink 1 / 4 / 10 / 25 Mbit/s, downlink 4x the uplink, rtt 80 / 60 / 45 / 35 ms,
  ``stay`` 0.85 (a cell edge to a good cell).

The predicted part runs two models, both costed by the library's roofline for a Jetson Nano
and a T4 (``estimate_profile(device="jetson-nano", server="t4")``): torchvision's MobileNetV2
(10 classes) on CIFAR-sized batches of 32 (3.5 M parameters: a migration moves tens of MB),
and the measured part's small CNN (0.25 M parameters). The measured part trains a small
CNN on sklearn's digits for ``MEASURED_STEPS`` steps on the embedded server, the emulated link
following the first trace (``SplitStrategy.set_link_limit`` before every batch), once with the
cut planned at the start and once with ``replan_every=MEASURED_EVERY``, and reports the wall
time of each (this machine: device and server share its CPU, so only the link differs).

Usage::

    python benchmarks/traces.py [--quick] [--steps 600] [--no-measure] [--out benchmarks/results/traces.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import ROOT, machine_info, render_table

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_split.planning.constrained import plan_with_options
from lightning_split.planning.migration import migration, move_pays
from lightning_split.planning.planner import best_layerwise, device_only, plan, server_only, step_time
from lightning_split.planning.profile import Link, NodeCost, Profile

OPTIMIZER_SLOTS = 2  # Adam: two moments per parameter migrate with it
EVERY = (1, 10, 50)
DEFAULT_STEPS = 600
MEASURED_STEPS = 24
MEASURED_EVERY = 4
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "traces.json"


@dataclass(frozen=True)
class MarkovTrace:
    """A Markov chain over link states ``(uplink Mbit/s, downlink Mbit/s, rtt ms)``: stay, or step to a neighbour."""

    name: str
    states: tuple[tuple[float, float, float], ...]
    stay: float
    start: int

    def links(self, steps: int, seed: int) -> list[Link]:
        """The link of each of ``steps`` steps, from the chain seeded with ``seed``."""
        rng = random.Random(f"{self.name}/{seed}")
        state, links = self.start, []
        for _ in range(steps):
            links.append(Link.from_mbps(*self.states[state]))
            if rng.random() >= self.stay:
                state = min(len(self.states) - 1, max(0, state + rng.choice((-1, 1))))
        return links

    def to_json(self) -> dict[str, Any]:
        return {"states_up_down_mbps_rtt_ms": self.states, "stay": self.stay, "start": self.start}


TRACES = (
    MarkovTrace("wifi", ((5, 5, 20), (20, 20, 10), (50, 50, 5), (100, 100, 3)), stay=0.9, start=2),
    MarkovTrace("lte", ((1, 4, 80), (4, 16, 60), (10, 40, 45), (25, 100, 35)), stay=0.85, start=2),
)


# ----------------------------------------------------------------------------------------------
# Strategies: a rule that, given the step's link, may choose a new placement.


@dataclass(frozen=True)
class Strategy:
    """A named placement rule: ``choose(profile_on_link)`` gives device node names; re-chosen every ``every`` steps."""

    name: str
    choose: Callable[[Profile], tuple[str, ...]]
    every: int | None  # None: chosen once, at the first step
    charged: bool = True  # pays its planning and migration time
    aware: bool = False  # moves only when the saving over the next `every` steps pays for the migration


def inference_profile(profile: Profile) -> Profile:
    """The inference cost graph DADS cuts: forward shares only; its link is set per step (:func:`inference_link`)."""
    nodes = [
        NodeCost(n.name, n.kind, n.inputs, n.out_bytes, n.forward_s("device"), n.forward_s("server"), dict(n.extra))
        for n in profile.nodes
    ]
    return Profile(nodes, list(profile.outputs), profile.link, dict(profile.extra))


def inference_link(link: Link) -> Link:
    """What an inference partitioner sees: tensors sent up once, nothing back, one round trip in all."""
    return Link(link.uplink_bytes_per_s, float("inf"), link.rtt_s / 2)


def strategies(profile: Profile, every: Sequence[int]) -> list[Strategy]:
    """The strategies of the module docstring, for re-planning periods ``every``."""
    infer = inference_profile(profile)

    def optimal(p: Profile) -> tuple[str, ...]:
        return plan_with_options(p).plan.device  # as SplitStrategy plans: raw inputs stay on the device

    def layerwise(p: Profile) -> tuple[str, ...]:
        return best_layerwise(p).device

    def dads(p: Profile) -> tuple[str, ...]:
        return plan(infer.with_link(inference_link(p.link)), "blockwise").device

    rules = [Strategy("oracle", optimal, 1, charged=False)]
    rules += [Strategy(f"replan/{n}", optimal, n) for n in every]
    rules += [Strategy(f"replan/{n} aware", optimal, n, aware=True) for n in every]
    rules += [Strategy("fixed", optimal, None), Strategy("layerwise fixed", layerwise, None)]
    rules += [Strategy(f"layerwise/{n}", layerwise, n) for n in every]
    rules += [Strategy(f"dads/{n}", dads, n) for n in every]
    rules += [Strategy("device only", lambda p: device_only(p).device, None)]
    rules += [Strategy("server only", lambda p: server_only(p).device, None)]
    return rules


def migration_s(profile: Profile, old: frozenset[str], new: frozenset[str], link: Link) -> float:
    """Seconds to move from device set ``old`` to ``new`` as the runtime does (server parts home and out)."""
    names = frozenset(profile.names)
    return migration(profile, names - old, names - new, OPTIMIZER_SLOTS).seconds(link)


def _pays(profile: Profile, old: frozenset[str], new: frozenset[str], horizon: int | None) -> bool:
    """Whether moving from ``old`` to ``new`` saves more over ``horizon`` steps on this link than migrating costs."""
    move_s = migration_s(profile, old, new, profile.link)
    return move_pays(step_time(profile, old).total, step_time(profile, new).total, horizon or 1, move_s)


def replay(profile: Profile, links: Sequence[Link], rule: Strategy, free: bool = False) -> dict[str, Any]:
    """Run one strategy over a trace: step, planning and migration seconds summed, re-plans and moves counted.

    ``free`` charges no planning or migration (the invariants of the tests compare those totals).
    """
    device: frozenset[str] | None = None
    step_s = plan_s = move_s = 0.0
    replans = moves = 0
    for t, link in enumerate(links):
        on_link = profile.with_link(link)
        if device is None or (rule.every is not None and t % rule.every == 0):
            started = time.perf_counter()
            chosen = frozenset(rule.choose(on_link))
            spent = time.perf_counter() - started
            if device is not None:
                replans += 1
                plan_s += spent
                if chosen != device and rule.aware and not free and not _pays(on_link, device, chosen, rule.every):
                    chosen = device
                if chosen != device:
                    moves += 1
                    move_s += migration_s(profile, device, chosen, link)
            device = chosen
        step_s += step_time(on_link, device).total
    charged = rule.charged and not free
    total = step_s + (plan_s + move_s if charged else 0.0)
    plan_s, move_s = (plan_s, move_s) if charged else (0.0, 0.0)
    return {"strategy": rule.name, "every": rule.every, "step_s": step_s, "planning_s": plan_s,
            "migration_s": move_s, "total_s": total, "replans": replans, "moves": moves}  # fmt: skip


def evaluate(profile: Profile, links: Sequence[Link], every: Sequence[int] = EVERY) -> list[dict[str, Any]]:
    """Every strategy over one trace, with its total against ``fixed`` (positive: it saves that fraction)."""
    rows = [replay(profile, links, rule) for rule in strategies(profile, every)]
    fixed = next(r["total_s"] for r in rows if r["strategy"] == "fixed")
    for row in rows:
        row["vs_fixed"] = 1.0 - row["total_s"] / fixed if fixed > 0 else 0.0
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["strategy", "total s", "vs fixed", "steps s", "planning ms", "migration s", "re-plans", "moves"]
    body = [
        [r["strategy"], f"{r['total_s']:.2f}", f"{100 * r['vs_fixed']:+.1f}%", f"{r['step_s']:.2f}",
         f"{1e3 * r['planning_s']:.1f}", f"{r['migration_s']:.3f}", str(r["replans"]), str(r["moves"])]
        for r in rows
    ]  # fmt: skip
    return render_table(header, body)


# ----------------------------------------------------------------------------------------------
# The profiles and the measured run (torch, lightning: imported here only).


def mobilenet_profile() -> Profile:
    """MobileNetV2 (10 classes), batch 32 of 3x32x32, by the library's roofline for a Jetson Nano and a T4."""
    import torch
    import torchvision

    from lightning_split.costs.estimate import estimate_profile
    from lightning_split.graph.capture import trace_module

    torch.manual_seed(0)
    module = torchvision.models.mobilenet_v2(num_classes=10)
    traced = trace_module(module, (torch.randn(32, 3, 32, 32),))
    profile = estimate_profile(traced, Link.from_mbps(50.0, rtt_ms=5.0), device="jetson-nano", server="t4")
    profile.extra["model"] = "torchvision.models.mobilenet_v2 (10 classes), batch 32x3x32x32, jetson-nano + t4"
    return profile


def measured_run(links: Sequence[Link], steps: int, every: int) -> dict[str, Any]:
    """Wall seconds of training a small CNN on digits, the emulated link following ``links``: fixed, re-planned."""
    from _traces_measured import digits_profile, train_following

    predicted = {row["strategy"]: row for row in evaluate(digits_profile(), links[:steps], (every,))}
    return {
        "steps": steps,
        "replan_every": every,
        "links_up_mbps": [round(link.uplink_bytes_per_s * 8 / 1e6, 3) for link in links[:steps]],
        "measured_fixed_s": train_following(links[:steps], replan_every=None),
        f"measured_replan_{every}_s": train_following(links[:steps], replan_every=every),
        "predicted_nano_t4": {name: predicted[name] for name in ("fixed", f"replan/{every}", "oracle")},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 steps, no measured run")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps per trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-measure", action="store_true", help="skip the measured training run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    steps = 100 if args.quick else args.steps
    from _traces_measured import digits_profile

    profiles = {"mobilenet_v2": mobilenet_profile(), "digits_wide": digits_profile()}
    result: dict[str, Any] = {"machine": machine_info(), "steps": steps, "seed": args.seed,
                              "optimizer_slots": OPTIMIZER_SLOTS, "models": {}}  # fmt: skip
    for name, profile in profiles.items():
        runs = result["models"][name] = {"model": profile.extra["model"], "traces": {}}
        for trace in TRACES:
            links = trace.links(steps, args.seed)
            rows = evaluate(profile, links)
            runs["traces"][trace.name] = {"parameters": trace.to_json(), "rows": rows}
            print(f"\n{name}, {trace.name} trace, {steps} steps, seed {args.seed} ({profile.extra['model']})")
            print(table(rows))
    if not (args.quick or args.no_measure):
        links = TRACES[0].links(MEASURED_STEPS, args.seed)
        measured = measured_run(links, MEASURED_STEPS, MEASURED_EVERY)
        result["measured"] = {"trace": TRACES[0].name, **measured}
        shown = {key: value for key, value in measured.items() if key.startswith("measured")}
        print(f"\nmeasured, {TRACES[0].name} trace, {MEASURED_STEPS} steps, digits CNN, wall seconds: {shown}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
