"""Cost sources: from a trace and a link to a cost profile the planner can solve.

A cost source (a :data:`ProfileBuilder`) is what
:func:`~lightning_split.runtime.placement.place_model` calls to price a trace:

- :class:`EstimatedCosts`: FLOPs over assumed throughputs
  (:func:`~lightning_split.costs.estimate.estimate_profile`);
- :class:`GivenCosts`: a profile made earlier (e.g. by ``lightning-split profile``), matched by
  node name;
- :class:`MeasuredCosts`: node costs timed on both sides by a
  :class:`~lightning_split.costs.profiler.Profiler` (cached on disk), assembled by
  :func:`measured_profile`.

:func:`cost_source` turns ``SplitStrategy``'s ``costs=`` and ``costs_options=`` into one of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_split.costs import estimate
from lightning_split.costs.cache import ProfileCache
from lightning_split.costs.linkprobe import measure_link, typical_payload_bytes
from lightning_split.costs.profiler import NodeCosts, Profiler
from lightning_split.graph.capture import TracedModel
from lightning_split.graph.describe import ModelDescription, example_of
from lightning_split.planning.profile import Link, NodeCost, Profile, ProfileError
from lightning_split.transport.optimizers import describe_optimizers

if TYPE_CHECKING:
    from lightning_split.transport.client import RemoteServer

__all__ = [
    "EstimatedCosts",
    "GivenCosts",
    "MeasuredCosts",
    "ProfileBuilder",
    "cost_source",
    "measured_profile",
    "profile_builder",
]

#: A cost source: the profile of a trace for a link.
ProfileBuilder = Callable[[TracedModel, Link], Profile]


class EstimatedCosts:
    """Node costs estimated with no hardware at hand (:func:`lightning_split.costs.estimate.estimate_profile`).

    Args:
        device_gflops, server_gflops: effective throughputs of both sides for the FLOP estimate
            (default: the estimate module's Jetson-class device and GPU-class server).
        options: further keyword arguments of ``estimate_profile``: ``device`` and ``server``
            (hardware presets, costed by their roofline: ``{"device": "jetson-nano", "server":
            "t4"}``), ``backward_factor``, ``min_node_s``, ``optimizer_slots``.
    """

    def __init__(self, device_gflops: float | None = None, server_gflops: float | None = None, **options: Any) -> None:
        self.device_gflops = None if device_gflops is None else float(device_gflops)
        self.server_gflops = None if server_gflops is None else float(server_gflops)
        self.options = options

    def __call__(self, traced: TracedModel, link: Link) -> Profile:
        return estimate.estimate_profile(traced, link, self.device_gflops, self.server_gflops, **self.options)


class GivenCosts:
    """Node costs from a profile made earlier (e.g. by ``lightning-split profile``), matched by node name.

    The graph (inputs, output bytes) is the trace's own; only ``device_s`` and ``server_s``
    come from the profile. A profile of another model, input shape or set of leaf modules
    names other nodes, which is refused rather than guessed at.

    Args:
        source: a :class:`Profile` or the path of a profile file.
    """

    def __init__(self, source: Profile | str | Path) -> None:
        self.origin = "the given profile" if isinstance(source, Profile) else str(source)
        self.profile = source if isinstance(source, Profile) else Profile.load(source)

    def __call__(self, traced: TracedModel, link: Link) -> Profile:
        given = {node.name: node for node in self.profile.nodes}
        names = [info.name for info in traced.nodes]
        missing = [name for name in names if name not in given]
        unknown = [name for name in given if name not in set(names)]
        if missing or unknown:
            raise ProfileError(
                f"{self.origin} does not match the model's graph: the profile lacks nodes {missing[:8]} and has "
                f"nodes the graph lacks {unknown[:8]}. Was it made for this model, input shape and leaf_modules?"
            )
        nodes = []
        for info in traced.nodes:
            cost = given[info.name]
            kind = "input" if info.op == "placeholder" else "op"
            nodes.append(
                NodeCost(info.name, kind, info.inputs, info.out_bytes, cost.device_s, cost.server_s, cost.extra)
            )
        extra = {**self.profile.extra, "costs_from": self.origin, "fingerprint": traced.fingerprint()}
        return Profile(nodes, list(traced.outputs), link, extra)


class MeasuredCosts:
    """Node costs timed on both sides by a :class:`~lightning_split.costs.profiler.Profiler`, cached on disk.

    The device's costs are timed in this process on the real batch; the server's by the
    server on its own copy of the model (the protocol's ``profile`` op). After a call,
    :attr:`notes` says how long it took and whether each side came from the cache.

    Args:
        remote: the connection to the server.
        model, init_args: the ``pkg.module:Class`` the server instantiates, and its arguments;
            with the trace they make the :class:`~lightning_split.graph.describe.ModelDescription`
            the server rebuilds and checks its copy from.
        args, kwargs: the batch to time the device on (the server times zero tensors of its shapes).
        profiler: cache, warm-up, repeats and calibration of both sides.
        optimizers: the training's optimizers as ``hello`` describes them
            (:func:`~lightning_split.transport.optimizers.describe_optimizers`): each side adds
            the time of their step over its parameters to the nodes that own them, since a
            training step runs the optimizer wherever the parameters live.
        measure_the_link: replace the link it is given by one measured over ``remote`` (probes
            of :func:`~lightning_split.costs.linkprobe.typical_payload_bytes`); the profile's
            ``link_source`` says which.
        report: gets each side's one-line account (e.g. ``log.info``).
        extra: more of the profile's extra fields (it always has ``model``, each side's
            ``hardware``, ``cached`` and calibration figures).
    """

    def __init__(
        self,
        remote: RemoteServer,
        model: str,
        init_args: Mapping[str, Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        profiler: Profiler,
        optimizers: Sequence[Mapping[str, Any]] = (),
        *,
        measure_the_link: bool = False,
        report: Callable[[str], None] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.remote = remote
        self.model, self.init_args = model, dict(init_args)
        self.args, self.kwargs = tuple(args), dict(kwargs)
        self.profiler = profiler
        self.optimizers = list(optimizers)
        self.measure_the_link = measure_the_link
        self.report = report
        self.extra = dict(extra or {})
        self.notes: dict[str, Any] = {}

    def __call__(self, traced: TracedModel, link: Link) -> Profile:
        device = self.profiler.device_costs(traced, self.args, self.kwargs, self.optimizers)
        description = ModelDescription.of(self.model, self.init_args, traced, example_of(self.args, self.kwargs))
        server = self.profiler.server_costs(self.remote, traced, description, self.optimizers)
        extra = {"model": self.model, **self.extra}
        if self.measure_the_link:
            probe = typical_payload_bytes(traced)
            link = measure_link(self.remote, probe, probe)
            extra["link_source"] = "measured"
        self.notes = {
            "costs": "measured",
            "profile_s": device.wall_s + server.wall_s,
            "device_costs": _how(device),
            "server_costs": _how(server),
        }
        for costs in (device, server):
            extra[f"{costs.side}_hardware"] = costs.hardware
            extra[f"{costs.side}_cached"] = costs.cached
            extra.update(costs.extras())
            if self.report is not None:
                self.report(costs.describe())
        parts = {
            f"{costs.side}_{field}_s": by_node
            for costs in (device, server)
            for field, by_node in (("fwd", costs.forward_s), ("fixed", costs.fixed_s))
            if by_node
        }
        return measured_profile(traced, device.node_s, server.node_s, link, extra, parts)


def _how(costs: NodeCosts) -> str:
    return "cache hit" if costs.cached else f"measured in {costs.wall_s:.2f} s"


def profile_builder(
    profiler: Profiler,
    remote: RemoteServer,
    model: str,
    init_args: Mapping[str, Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    measure_the_link: bool = True,
    report: Callable[[str], None] | None = None,
    optimizers: Sequence[Mapping[str, Any]] = (),
) -> MeasuredCosts:
    """A :class:`MeasuredCosts` for ``model(**init_args)`` on the batch ``args``, ``kwargs``.

    The builder times the device side here and the server side through ``remote`` (both
    cached by ``profiler``), and, with ``measure_the_link``, replaces the link it is given by
    the one measured over ``remote`` (keep it ``False`` to plan for a link given by the user,
    or on an embedded server, whose loopback says nothing about a real network). Each step's
    one-line account goes to ``report`` (e.g. ``log.info``). ``optimizers`` (see
    :func:`~lightning_split.transport.optimizers.describe_optimizers`) add their steps to the
    parameter nodes on both sides.
    """

    return MeasuredCosts(
        remote,
        model,
        init_args,
        args,
        kwargs,
        profiler,
        optimizers,
        measure_the_link=measure_the_link,
        report=report,
        extra={"link_source": "given"},
    )


def measured_profile(
    traced: TracedModel,
    device_s: Mapping[str, float],
    server_s: Mapping[str, float],
    link: Link,
    extra: Mapping[str, Any] | None = None,
    parts: Mapping[str, Mapping[str, float]] | None = None,
) -> Profile:
    """A profile (``docs/profile-format.md``) of ``traced`` with the given node costs and link.

    Node fields (kind, inputs, out_bytes, and the ``op``/``module``/``flops``/``shape`` extras)
    are those of :func:`~lightning_split.costs.estimate.estimate_profile`; only the costs differ.
    ``extra`` is merged into the profile's top-level extra fields (e.g. hardware names,
    ``server_s_source``). ``parts`` maps optional node fields (``device_fwd_s``,
    ``server_fwd_s``, ``device_fixed_s``, ``server_fixed_s``) to their seconds per node; a
    value is kept within the node's cost on its side.

    Raises:
        ValueError: a cost mapping lacks nodes of the trace (named).
    """
    for label, costs in (("device_s", device_s), ("server_s", server_s)):
        missing = [info.name for info in traced.nodes if info.name not in costs]
        if missing:
            raise ValueError(f"{label} lacks {len(missing)} node(s) of the trace: {missing[:8]}")
    base = estimate.estimate_profile(traced, link)
    nodes = []
    for node in base.nodes:
        if node.kind == "op":
            costs = {"device_s": float(device_s[node.name]), "server_s": float(server_s[node.name])}
            for field_name, by_node in (parts or {}).items():
                if node.name in by_node:
                    costs[field_name] = min(float(by_node[node.name]), costs[field_name.split("_")[0] + "_s"])
            node = dataclasses.replace(node, **costs)
        nodes.append(node)
    top = {
        "batch_size": traced.batch_size,
        "fingerprint": traced.fingerprint(),
        "estimated": False,
        "device_s_source": "measured",
        "server_s_source": "measured",
        **dict(extra or {}),
    }
    return Profile(nodes, list(base.outputs), link, top)


def cost_source(
    costs: str | Path | Profile,
    options: Mapping[str, Any] | None = None,
    *,
    remote: RemoteServer | None = None,
    model: str = "",
    init_args: Mapping[str, Any] | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    module: nn.Module | None = None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> ProfileBuilder:
    """The cost source ``costs`` names (``SplitStrategy``'s ``costs=``), set up with ``options``.

    Args:
        costs: ``"estimate"`` (:class:`EstimatedCosts`, ``options`` are its keyword
            arguments), ``"measure"`` (:class:`MeasuredCosts`; ``options``: ``warmup``,
            ``repeats`` and ``calibrate`` of the :class:`~lightning_split.costs.profiler.Profiler`,
            and ``cache``, a directory or ``False`` for none, default
            :func:`~lightning_split.costs.cache.default_cache_dir`), or a ``Profile`` or the path
            of a profile file (:class:`GivenCosts`).
        options: the cost source's options (``costs_options=``).
        remote, model, init_args, args, kwargs: for ``"measure"``: the connection to the
            server, the model it instantiates and the batch (see :class:`MeasuredCosts`).
        device: this side's torch device, where ``"measure"`` times the device's nodes.
        module, optimizers: the training's module and optimizers, whose steps ``"measure"``
            adds to the parameter nodes (described only then: a description warns about an
            optimizer the server cannot rebuild).
    """
    if isinstance(costs, Profile) or (isinstance(costs, str | Path) and costs not in ("measure", "estimate")):
        return GivenCosts(costs)
    if costs == "estimate":
        return EstimatedCosts(**dict(options or {}))
    settings = dict(options or {})
    cache = settings.pop("cache", None)
    profiler = Profiler(cache=None if cache is False else ProfileCache(cache), device=device, **settings)
    assert remote is not None, "measured costs need the connection to the server"
    described = describe_optimizers(module, optimizers) if module is not None else []
    return MeasuredCosts(remote, model, init_args or {}, args, kwargs or {}, profiler, described)
