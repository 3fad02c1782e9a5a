"""The baselines the optimal plan is compared with: ``device_only``, ``server_only`` and ``best_layerwise``.

They are defined in ``docs/cost-model.md``: everything on the device (no network at all), only
the inputs on the device (all compute remote), and the best single split point of the profile
order (the classic partition of a chain). They take no pins.
"""

from __future__ import annotations

import math
import time

from lightning_split.planning.costmodel import Plan, graph_positions, make_plan
from lightning_split.planning.profile import Profile

__all__ = ["baselines", "best_layerwise", "device_only", "server_only"]


def device_only(profile: Profile) -> Plan:
    """Baseline: every node on the device (no network at all)."""
    started = time.perf_counter()
    return make_plan(profile, "device_only", range(len(profile.nodes)), started)


def server_only(profile: Profile) -> Plan:
    """Baseline: only the input nodes on the device; the inputs are uploaded and all compute is remote."""
    started = time.perf_counter()
    return make_plan(
        profile, "server_only", [i for i, node in enumerate(profile.nodes) if node.kind == "input"], started
    )


def best_layerwise(profile: Profile) -> Plan:
    """Baseline: the best single split point of the profile order (``D`` = the first ``k`` nodes).

    This is the classic partition of a chain; on a DAG whose graph order interleaves branches it
    can be strictly worse than the optimum, since ``D`` must be a prefix of the order. ``k``
    ranges over the prefixes that hold every input node; all ``T`` are computed in one pass
    (each tensor crosses for the ``k`` between its producer and its last consumer).
    """
    started = time.perf_counter()
    nodes = profile.nodes
    n = len(nodes)
    position, inputs = graph = graph_positions(profile)
    per_byte = profile.link.seconds_per_byte_round_trip
    last_consumer = list(range(n))
    for w, sources in enumerate(inputs):
        for u in sources:
            last_consumer[u] = w
    # delta[k]: change of the bytes crossing when the prefix grows to k nodes (u crosses for k in u+1..last).
    delta = [0] * (n + 2)
    for u, node in enumerate(nodes):
        if last_consumer[u] > u:
            delta[u + 1] += node.out_bytes
            delta[last_consumer[u] + 1] -= node.out_bytes
    returned = [0] * (n + 1)
    for v in {position[name] for name in profile.outputs}:
        returned[v] = nodes[v].out_bytes
    server_tail = [0.0] * (n + 1)
    for v in range(n - 1, -1, -1):
        server_tail[v] = server_tail[v + 1] + nodes[v].server_s
        returned[v] += returned[v + 1]
    first_k = max((i + 1 for i, node in enumerate(nodes) if node.kind == "input"), default=0)
    device_head = sum(node.device_s for node in nodes[:first_k])
    crossing = sum(delta[: first_k + 1])
    best_k, best_total = n, math.inf
    for k in range(first_k, n + 1):
        if k > first_k:
            device_head += nodes[k - 1].device_s
            crossing += delta[k]
        total = device_head + server_tail[k] + (crossing + returned[k]) * per_byte
        if k < n:
            total += 2.0 * profile.link.rtt_s
        if total < best_total:
            best_k, best_total = k, total
    return make_plan(profile, "best_layerwise", range(best_k), started, graph)


def baselines(profile: Profile) -> dict[str, float]:
    """Predicted step times of the three baselines: ``device_only``, ``server_only``, ``best_layerwise``."""
    return {
        "device_only": device_only(profile).predicted_step_s,
        "server_only": server_only(profile).predicted_step_s,
        "best_layerwise": best_layerwise(profile).predicted_step_s,
    }
