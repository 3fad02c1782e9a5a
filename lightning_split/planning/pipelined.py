"""The pipelined step time ``T_M`` (micro-batches and codecs): what the pipelined planner minimises.

With ``M`` micro-batches a training step has two phases, because ``training_step`` computes the
loss on the whole batch's outputs: all forwards (device prefix, upload of the crossing tensors,
server forward, download of the server-side outputs), the loss, then all backwards (upload of
the output gradients, server backward, download of the cut gradients, device backward). Within
a phase the micro-batches flow through its four stages as through a pipeline, whose time is

    pipe_M(t1, ..., tk) = (t1 + ... + tk) / M + (1 - 1/M) * max(t1, ..., tk)

(the first micro-batch passes every stage, the other ``M - 1`` are paced by the slowest one).
For a placement ``(D, S)`` with ``S`` non-empty, with ``X`` the bytes of the device tensors that
cross (once each), ``O`` the bytes of the model outputs computed on the server and ``rho`` the
codec's ratio of bytes on the wire to raw bytes::

    T_M = pipe_M(Df, rho*X/uplink, Sf, rho*O/downlink)
        + pipe_M(rho*O/uplink, Sb, rho*X/downlink, Db)
        + 2 * rtt_s + 2 * M * message_s

and ``T_M`` is the device time of every node when ``S`` is empty. ``Df``/``Db`` (``Sf``/``Sb``)
are the forward and backward shares of the device (server) nodes: ``device_fwd_s`` /
``server_fwd_s`` of the profile where known, otherwise one third of the node's time. A node with a
fixed part (``device_fixed_s`` / ``server_fixed_s``: what a micro-batch pays whatever its size,
per-op overheads that a CPU pays again for every micro-batch) adds ``(M - 1) * fixed`` to its
shares (:meth:`~lightning_split.planning.profile.NodeCost.stage_s`). With
``M = 1``, ``rho = 1`` and ``message_s = 0`` this is the sequential ``T`` of
:func:`lightning_split.planning.planner.step_time`.

:class:`StageCosts` holds a profile as arrays over graph positions, for the optimisers
(:mod:`~lightning_split.planning.enumeration`, :mod:`~lightning_split.planning.lagrangian`);
:class:`Objective` turns the sums of a placement into ``T_M``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_split.planning.costmodel import PlanningError
from lightning_split.planning.profile import Profile

__all__ = [
    "CODEC_RATIOS",
    "Objective",
    "PipelinedTime",
    "StageCosts",
    "codec_ratio",
    "pipe_m",
    "pipelined_step_time",
]

#: Bytes on the wire per raw byte, for each built-in codec (``none`` sends the tensors as they are).
CODEC_RATIOS = {"none": 1.0, "fp16": 0.5, "bf16": 0.5, "int8": 0.25}


def codec_ratio(codec: str) -> float:
    """The wire ratio of a codec named in :data:`CODEC_RATIOS`.

    Raises:
        PlanningError: an unknown codec (the message lists the known ones).
    """
    try:
        return CODEC_RATIOS[codec]
    except (KeyError, TypeError):
        raise PlanningError(f"unknown codec {codec!r}; expected one of {', '.join(CODEC_RATIOS)}") from None


def check_micro_batches(micro_batches: int) -> int:
    """``micro_batches`` as an int if it is an integer >= 1; raise :class:`PlanningError` otherwise."""
    try:
        value = operator.index(micro_batches)
    except TypeError:
        value = 0
    if isinstance(micro_batches, bool) or value < 1:
        raise PlanningError(f"micro_batches must be an integer >= 1, got {micro_batches!r}")
    return value


def pipe_m(times: Sequence[float], m: int) -> float:
    """Time for ``m`` micro-batches to flow through stages of per-batch times ``times``.

    ``times`` are the stage times of the whole batch; each micro-batch takes ``1/m`` of them.
    ``pipe_1`` is the plain sum: no overlap.
    """
    total = sum(times)
    return total if m == 1 else total / m + (1.0 - 1.0 / m) * max(times)


@dataclass(frozen=True)
class PipelinedTime:
    """``T_M`` of one placement and its terms, in seconds per training step.

    The forward phase's stages are ``device_fwd_s``, ``upload_fwd_s`` (the crossing tensors),
    ``server_fwd_s`` and ``download_fwd_s`` (the server-side outputs); the backward phase's
    ``upload_bwd_s`` (the output gradients), ``server_bwd_s``, ``download_bwd_s`` (the cut
    gradients) and ``device_bwd_s``. Transfers are already scaled by the codec's ratio.
    ``rtt_s`` is ``2 * rtt_s`` and ``message_s`` is ``2 * M * message_s`` of the link when any
    node runs on the server, else 0.
    """

    micro_batches: int
    device_fwd_s: float
    upload_fwd_s: float
    server_fwd_s: float
    download_fwd_s: float
    upload_bwd_s: float
    server_bwd_s: float
    download_bwd_s: float
    device_bwd_s: float
    rtt_s: float
    message_s: float

    @property
    def forward_stages(self) -> tuple[float, float, float, float]:
        return (self.device_fwd_s, self.upload_fwd_s, self.server_fwd_s, self.download_fwd_s)

    @property
    def backward_stages(self) -> tuple[float, float, float, float]:
        return (self.upload_bwd_s, self.server_bwd_s, self.download_bwd_s, self.device_bwd_s)

    @property
    def forward_s(self) -> float:
        """The pipelined forward phase."""
        return pipe_m(self.forward_stages, self.micro_batches)

    @property
    def backward_s(self) -> float:
        """The pipelined backward phase."""
        return pipe_m(self.backward_stages, self.micro_batches)

    @property
    def total(self) -> float:
        """``T_M``: both phases plus the round trips and per-message costs."""
        return self.forward_s + self.backward_s + self.rtt_s + self.message_s

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data.update(forward_s=self.forward_s, backward_s=self.backward_s, total_s=self.total)
        return data


class StageCosts:
    """A profile as arrays over graph positions: the graph and each node's stage costs.

    Attributes:
        names, position: node names in graph order and the position of each name.
        inputs, consumers: distinct input / consumer positions of each node.
        is_input: whether the node is a model input (always on the device).
        device_fwd, device_bwd, server_fwd, server_bwd: forward and backward shares, seconds, of
            ``micro_batches`` micro-batches together: with the nodes' ``device_fixed_s`` /
            ``server_fixed_s`` these grow with ``M`` (:meth:`NodeCost.stage_s`), so an
            :class:`Objective` must be for the same ``M``.
        out_bytes: bytes each node produces; ``returned``: the same for model outputs, else 0.
        mem: ``device_mem_bytes`` (0 where unknown).
        uplink, downlink, rtt_s, message_s: the link.
        codec_s_per_byte: measured seconds to encode and decode one raw byte, by codec (the
            profile's optional top-level ``codec_s_per_byte``; none: free), charged with each transfer.
    """

    def __init__(self, profile: Profile, micro_batches: int = 1) -> None:
        nodes = profile.nodes
        self.n = len(nodes)
        self.names = [node.name for node in nodes]
        self.position = {name: i for i, name in enumerate(self.names)}
        self.inputs = [tuple(dict.fromkeys(self.position[u] for u in node.inputs)) for node in nodes]
        self.consumers: list[list[int]] = [[] for _ in nodes]
        for w, sources in enumerate(self.inputs):
            for u in sources:
                self.consumers[u].append(w)
        self.is_input = [node.kind == "input" for node in nodes]
        self.micro_batches = micro_batches = check_micro_batches(micro_batches)
        self.device_fwd, self.device_bwd = _columns(node.stage_s("device", micro_batches) for node in nodes)
        self.server_fwd, self.server_bwd = _columns(node.stage_s("server", micro_batches) for node in nodes)
        #: whether any node has a part that every micro-batch pays (then the arrays hold for ``micro_batches`` only)
        self.has_fixed = any(node.device_fixed_s or node.server_fixed_s for node in nodes)
        #: forward and backward seconds of everything on the device, which runs the batch whole
        self.alone_fwd = math.fsum(node.forward_s("device") for node in nodes)
        self.alone_bwd = math.fsum(node.device_s for node in nodes) - self.alone_fwd
        self.out_bytes = [node.out_bytes for node in nodes]
        outputs = set(profile.outputs)
        self.returned = [node.out_bytes if node.name in outputs else 0 for node in nodes]
        self.mem = [node.device_mem_bytes or 0 for node in nodes]
        link = profile.link
        self.uplink, self.downlink = link.uplink_bytes_per_s, link.downlink_bytes_per_s
        self.rtt_s, self.message_s = link.rtt_s, link.per_message_s
        self.codec_s_per_byte = _codec_costs(profile.extra.get("codec_s_per_byte"))

    def mask(self, device: Iterable[str]) -> list[bool]:
        """Which positions are on the device; raise :class:`PlanningError` for unknown names."""
        wanted = {device} if isinstance(device, str) else set(device)
        unknown = sorted(wanted.difference(self.position))
        if unknown:
            raise PlanningError(f"unknown node(s): {', '.join(unknown)}")
        return [name in wanted for name in self.names]

    def crossing(self, on_device: Sequence[bool]) -> list[int]:
        """Device positions with a consumer on the server (their tensors cross), in graph order."""
        return [u for u in range(self.n) if on_device[u] and any(not on_device[w] for w in self.consumers[u])]

    def time(self, on_device: Sequence[bool], objective: Objective) -> PipelinedTime:
        """``T_M`` of a placement (any placement, feasible or not) with its terms."""
        device = [v for v in range(self.n) if on_device[v]]
        server = [v for v in range(self.n) if not on_device[v]]
        crossed = sum(self.out_bytes[u] for u in self.crossing(on_device))
        returned = sum(self.returned[v] for v in server)
        return objective.terms(
            device_fwd=math.fsum(self.device_fwd[v] for v in device),
            device_bwd=math.fsum(self.device_bwd[v] for v in device),
            server_fwd=math.fsum(self.server_fwd[v] for v in server),
            server_bwd=math.fsum(self.server_bwd[v] for v in server),
            crossed=crossed,
            returned=returned,
            server_used=bool(server),
        )


class Objective:
    """``T_M`` from the sums of a placement, for ``M`` micro-batches, a codec and a link.

    ``total`` is the optimisers' inner loop; ``terms`` gives the same value with its terms.
    """

    __slots__ = (
        "alone",
        "codec",
        "down_per_byte",
        "fixed_s",
        "inverse",
        "micro_batches",
        "rtt_s",
        "share",
        "up_per_byte",
    )

    def __init__(self, costs: StageCosts, micro_batches: int, codec: str) -> None:
        micro_batches = self.micro_batches = check_micro_batches(micro_batches)
        if costs.has_fixed and costs.micro_batches != micro_batches:
            raise PlanningError(
                f"stage costs built for {costs.micro_batches} micro-batch(es) cannot price {micro_batches}: "
                "the profile's fixed per-micro-batch costs depend on M; build StageCosts(profile, micro_batches)"
            )
        rho = codec_ratio(codec)
        self.codec = codec
        self.alone = (costs.alone_fwd, costs.alone_bwd)  # no server part: the batch is not cut
        self.inverse, self.share = 1.0 / micro_batches, 1.0 - 1.0 / micro_batches
        coding_s = costs.codec_s_per_byte.get(codec, 0.0)  # encoding at one end, decoding at the other
        self.up_per_byte = rho / costs.uplink + coding_s
        self.down_per_byte = rho / costs.downlink + coding_s
        self.rtt_s = 2.0 * costs.rtt_s
        #: paid once per step when any node is on the server: round trips and per-message costs
        self.fixed_s = self.rtt_s + 2.0 * micro_batches * costs.message_s

    def total(
        self,
        device_fwd: float,
        device_bwd: float,
        server_fwd: float,
        server_bwd: float,
        crossed: float,
        returned: float,
        server_used: bool,
    ) -> float:
        """``T_M`` given the device and server shares and the crossing and returned bytes.

        ``server_used=False`` means every node is on the device (the sums are then ignored: the
        batch runs whole). This is :func:`pipe_m` of both phases written out, since the
        optimisers call it for every placement they evaluate.
        """
        if not server_used:
            return self.alone[0] + self.alone[1]
        up, down = self.up_per_byte, self.down_per_byte
        x_up, x_down, o_up, o_down = crossed * up, crossed * down, returned * up, returned * down
        stages = device_fwd + x_up + server_fwd + o_down + o_up + server_bwd + x_down + device_bwd
        slowest = max(device_fwd, x_up, server_fwd, o_down) + max(o_up, server_bwd, x_down, device_bwd)
        return stages * self.inverse + self.share * slowest + self.fixed_s

    def bound(
        self,
        device_fwd: float,
        device_bwd: float,
        server_fwd: float,
        server_bwd: float,
        crossed: float,
        returned: float,
        server_required: bool,
    ) -> float:
        """A lower bound of ``T_M`` over the placements whose sums are at least these.

        ``T_M`` grows with every sum, so :meth:`total` bounds the placements that must use the
        server (``server_required``). Where the server part may be empty, all on the device
        costs ``alone`` (the batch is not cut), and a split costs at least its device shares
        (each phase's pipeline lasts at least its slowest stage times ``1 - 1/M`` plus the
        stages' sum over ``M``).
        """
        if server_required:
            return self.total(device_fwd, device_bwd, server_fwd, server_bwd, crossed, returned, True)
        return min(self.alone[0] + self.alone[1], device_fwd + device_bwd)

    def terms(
        self,
        device_fwd: float,
        device_bwd: float,
        server_fwd: float,
        server_bwd: float,
        crossed: float,
        returned: float,
        server_used: bool,
    ) -> PipelinedTime:
        """The :class:`PipelinedTime` of the same sums as :meth:`total`."""
        if not server_used:
            device_fwd, device_bwd = self.alone
        return PipelinedTime(
            micro_batches=self.micro_batches,
            device_fwd_s=device_fwd,
            upload_fwd_s=crossed * self.up_per_byte,
            server_fwd_s=server_fwd,
            download_fwd_s=returned * self.down_per_byte,
            upload_bwd_s=returned * self.up_per_byte,
            server_bwd_s=server_bwd,
            download_bwd_s=crossed * self.down_per_byte,
            device_bwd_s=device_bwd,
            rtt_s=self.rtt_s if server_used else 0.0,
            message_s=self.fixed_s - self.rtt_s if server_used else 0.0,
        )


def _columns(pairs: Iterable[tuple[float, float]]) -> tuple[list[float], list[float]]:
    forward: list[float] = []
    backward: list[float] = []
    for f, b in pairs:
        forward.append(f)
        backward.append(b)
    return forward, backward


def _codec_costs(value: Any) -> dict[str, float]:
    """The profile's ``codec_s_per_byte`` checked: codec name -> finite seconds >= 0."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and 0 <= v < math.inf for k, v in value.items()
    ):
        raise PlanningError(f"codec_s_per_byte must map codec names to seconds >= 0, got {value!r}")
    return {k: float(v) for k, v in value.items()}


def pipelined_step_time(
    profile: Profile, device_names: Iterable[str], micro_batches: int, codec: str = "none"
) -> PipelinedTime:
    """``T_M`` of any placement (feasible or not) and its terms.

    Parameters:
        profile: the cost graph and link (``link.message_s`` is charged ``2 * M`` times).
        device_names: names of the device nodes; every other node is on the server.
        micro_batches: ``M``, an integer >= 1.
        codec: a name in :data:`CODEC_RATIOS`; it scales every transfer.

    Returns:
        A :class:`PipelinedTime`; ``.total`` is ``T_M``.

    Raises:
        PlanningError: an unknown node name or codec, or ``micro_batches`` < 1.

    Examples:
        >>> from lightning_split.planning.profile import Link, chain_profile
        >>> profile = chain_profile([3.0, 3.0], [3.0, 3.0], [10, 10], Link(10.0, 10.0))
        >>> pipelined_step_time(profile, ["x", "n0"], 1).total
        10.0
        >>> pipelined_step_time(profile, ["x", "n0"], 2).total
        6.5
    """
    costs = StageCosts(profile, micro_batches)
    return costs.time(costs.mask(device_names), Objective(costs, micro_batches, codec))
