"""Measured profiles in one import: node costs timed on real hardware, the link on the real connection.

The optimal cut is only as good as the costs it is computed from. Measuring them takes four
jobs, each in its own module; this module gathers their public names:

- :mod:`lightning_split.costs.timing`: every fx node's forward+backward timed on one batch,
  calibrated to whole passes, plus the optimizer steps (:func:`time_node_costs`);
  :mod:`lightning_split.costs.replay` holds what it runs.
- :mod:`lightning_split.costs.linkprobe`: round trip and both rates over the training
  connection (:func:`measure_link`).
- :mod:`lightning_split.costs.cache`: node costs on disk, keyed by graph, batch shapes, side,
  hardware and torch version (:class:`ProfileCache`).
- :mod:`lightning_split.costs.profiler`: both sides' costs from the cache or by measuring, the
  server's through the protocol's ``profile`` op (:class:`Profiler`).

Profiles are assembled from them by the cost sources of :mod:`lightning_split.costs.sources`
(:func:`measured_profile`, :func:`profile_builder`).
"""

from __future__ import annotations

from lightning_split.costs.cache import CACHE_ENV, CACHE_FORMAT, CachedCosts, ProfileCache, default_cache_dir
from lightning_split.costs.linkprobe import (
    MAX_PROBE_BYTES,
    MIN_PROBE_BYTES,
    NOISE_FLOOR_S,
    measure_link,
    typical_payload_bytes,
)
from lightning_split.costs.profiler import NodeCosts, Profiler, model_fields
from lightning_split.costs.sources import measured_profile, profile_builder
from lightning_split.costs.timing import TimedCosts, hardware_name, measure_node_costs, time_node_costs

__all__ = [
    "CACHE_ENV",
    "CACHE_FORMAT",
    "MAX_PROBE_BYTES",
    "MIN_PROBE_BYTES",
    "NOISE_FLOOR_S",
    "CachedCosts",
    "NodeCosts",
    "ProfileCache",
    "Profiler",
    "TimedCosts",
    "default_cache_dir",
    "hardware_name",
    "measure_link",
    "measure_node_costs",
    "measured_profile",
    "model_fields",
    "profile_builder",
    "time_node_costs",
    "typical_payload_bytes",
]
