"""Codecs on the delay grid: how far the optimum moves, how much delay each codec saves, what accuracy costs.

Two parts, both called by ``benchmarks/delay.py --codecs`` (and runnable alone):

- :func:`codec_grid`: for each Jetson/T4 pair, model and uplink of the delay grid, the optimal
  placement's predicted step time ``T`` (``docs/cost-model.md`` section 1b, one micro-batch)
  with each codec, planned by :func:`lightning_split.planning.constrained.plan_with_options`
  (private inputs off, as in the other delay rows, so only the codec differs), the delay saved
  against ``none`` (``1 - T_codec / T_none``) and how far the optimum moved (nodes that changed
  sides, and whether the cut changed). Encode and decode are charged per raw byte of each
  transfer as memory-bound passes on both ends (``codec_s_per_byte``): ``passes * (1 + rho)``
  bytes of DRAM traffic per raw byte at ``MEMORY_FRACTION`` of each side's bandwidth (one pass
  for a cast, two for int8: the row maxima, then the quantisation). No Jetson was measured.
- :func:`digits_accuracy`: validation accuracy of the digits MLP (64-256-10, Adam 1e-3, batch 32,
  3 epochs, 1400/397 split) cut after its first layer, with every crossing tensor (activations
  up, their gradients down, logits down, their gradients up) passed through the real codec's
  encode and decode, as the wire does; mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import ROOT, render_table

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_split.planning.constrained import plan_with_options
from lightning_split.planning.pipelined import CODEC_RATIOS
from lightning_split.planning.profile import Profile

CODECS = ("none", "fp16", "bf16", "int8")
PASSES = {"none": 0, "fp16": 1, "bf16": 1, "int8": 2}
CODEC_PAIRS = (("nano", "t4"), ("tx2", "t4"), ("xavier_nx", "t4"), ("agx_orin", "t4"))


def codec_s_per_byte(device_bytes_per_s: float, server_bytes_per_s: float) -> dict[str, float]:
    """Encode at one end and decode at the other, per raw byte, as memory-bound passes (module docstring)."""
    return {
        codec: PASSES[codec] * (1 + CODEC_RATIOS[codec]) * (1 / device_bytes_per_s + 1 / server_bytes_per_s) / 2
        for codec in CODECS
    }


def codec_rows(train: Profile, coding_s: dict[str, float]) -> list[dict[str, Any]]:
    """One row per codec for one profile and link: step time, delay saved against none, how far the cut moved."""
    profile = Profile(train.nodes, train.outputs, train.link, {**train.extra, "codec_s_per_byte": coding_s})
    results = {}
    for codec in CODECS:
        outcome = plan_with_options(profile, "blockwise", codec=codec, private_inputs=False)
        results[codec] = outcome.plan
    base = results["none"]
    rows = []
    for codec, plan in results.items():
        moved = set(plan.device).symmetric_difference(base.device)
        rows.append(
            {
                "codec": codec,
                "step_s": plan.predicted_step_s,
                "saved_vs_none": 1.0 - plan.predicted_step_s / base.predicted_step_s,
                "nodes_moved": len(moved),
                "cut_changed": list(plan.cut) != list(base.cut),
                "cut": list(plan.cut),
                "device_nodes": len(plan.device),
            }
        )
    return rows


def codec_grid(
    units: dict[str, Profile],
    pairs: Sequence[tuple[str, str]],
    bandwidths: Sequence[float],
    down_multiple: float,
    rtt_ms: float,
) -> list[dict[str, Any]]:
    """Codec rows over the delay grid (roofline node costs); the delay module supplies the hardware and links."""
    import delay

    model = delay.COST_MODEL_TYPES["roofline"]()
    rows = []
    for pair in pairs:
        device, server = delay.HARDWARE[pair[0]], delay.HARDWARE[pair[1]]
        coding_s = codec_s_per_byte(device.memory_bytes_per_s, server.memory_bytes_per_s)
        for name, unit in units.items():
            train = delay.costed_profile(unit, model, device, server, training=True)
            for mbps in bandwidths:
                linked = train.with_link(delay.training_link(mbps, down_multiple, rtt_ms))
                for row in codec_rows(linked, coding_s):
                    rows.append({"pair": delay.pair_name(pair), "model": name, "uplink_mbps": mbps, **row})
    return rows


def summarise_codecs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per codec: median and best delay saved, share of grid points where the optimum moved."""
    out = {}
    for codec in CODECS[1:]:
        selected = [r for r in rows if r["codec"] == codec]
        best = max(selected, key=lambda r: r["saved_vs_none"])
        out[codec] = {
            "median_saved": statistics.median(r["saved_vs_none"] for r in selected),
            "best_saved": best["saved_vs_none"],
            "best_at": {k: best[k] for k in ("pair", "model", "uplink_mbps")},
            "share_moved": sum(r["nodes_moved"] > 0 for r in selected) / len(selected),
            "median_nodes_moved_when_moved": statistics.median(
                [r["nodes_moved"] for r in selected if r["nodes_moved"]] or [0]
            ),
        }
    return out


def digits_accuracy(seeds: int = 5, epochs: int = 3) -> dict[str, Any]:
    """Validation accuracy of the digits MLP with each codec on every crossing tensor (module docstring)."""
    import torch
    from sklearn.datasets import load_digits

    from lightning_split.transport.codecs import CODECS as REGISTRY

    class Cross(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, codec: Any) -> torch.Tensor:
            ctx.codec = codec
            return codec.decode(*codec.encode(x), x.dtype) if codec.applies(x) else x

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> Any:
            codec = ctx.codec
            return (codec.decode(*codec.encode(grad), grad.dtype) if codec.applies(grad) else grad), None

    data = load_digits()
    images = torch.tensor(data.data, dtype=torch.float32) / 16.0
    labels = torch.tensor(data.target)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, val = order[:1400], order[1400:]
    result: dict[str, Any] = {}
    for name in CODECS:
        codec = REGISTRY[name]
        accuracies = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            l1, head = torch.nn.Linear(64, 256), torch.nn.Linear(256, 10)
            optimizer = torch.optim.Adam([*l1.parameters(), *head.parameters()], lr=1e-3)
            for _ in range(epochs):
                shuffled = train[torch.randperm(len(train))]
                for start in range(0, len(shuffled), 32):
                    batch = shuffled[start : start + 32]
                    logits = Cross.apply(head(torch.relu(Cross.apply(l1(images[batch]), codec))), codec)
                    loss = torch.nn.functional.cross_entropy(logits, labels[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            with torch.no_grad():
                accuracies.append(float((head(torch.relu(l1(images[val]))).argmax(1) == labels[val]).float().mean()))
        result[name] = {"mean": statistics.mean(accuracies), "per_seed": accuracies}
    return result


def codec_table(summary: dict[str, Any], accuracy: dict[str, Any]) -> str:
    rows = []
    for codec, stats in summary.items():
        drop = accuracy[codec]["mean"] - accuracy["none"]["mean"]
        rows.append(
            [
                codec,
                f"{100 * stats['median_saved']:.1f}%",
                f"{100 * stats['best_saved']:.1f}%",
                f"{100 * stats['share_moved']:.0f}%",
                f"{100 * accuracy[codec]['mean']:.1f}% ({100 * drop:+.1f})",
            ]
        )
    header = ["codec", "median delay saved", "best delay saved", "optimum moved", "digits val acc (vs none)"]
    return render_table(header, rows)


def run(units: dict[str, Profile], bandwidths: Sequence[float], down_multiple: float, rtt_ms: float,
        out: Path, seeds: int = 5) -> dict[str, Any]:  # fmt: skip
    """The codec rows, their summary and the accuracy, written to ``out`` (JSON) and printed."""
    rows = codec_grid(units, CODEC_PAIRS, bandwidths, down_multiple, rtt_ms)
    summary = summarise_codecs(rows)
    accuracy = digits_accuracy(seeds)
    result = {"rows": rows, "summary": summary, "digits_accuracy": accuracy}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(codec_table(summary, accuracy))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    import delay

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two models, four uplinks, two seeds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "codecs.json")
    args = parser.parse_args(argv)
    names = delay.QUICK_WORKLOADS if args.quick else tuple(delay.WORKLOADS)
    units = {name: delay.unit_profile(delay.WORKLOADS[name], delay.DEFAULT_CACHE)[0] for name in names}
    bandwidths = delay.QUICK_BANDWIDTHS_MBPS if args.quick else delay.BANDWIDTHS_MBPS
    run(units, bandwidths, delay.DOWN_MULTIPLE, delay.RTT_MS, args.out, seeds=2 if args.quick else 5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
