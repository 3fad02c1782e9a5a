"""Cost profiles: the graph and the costs the planner minimises (``lightning-split-profile/1``).

A :class:`Profile` is the planner's whole world: nodes in graph order, each with the nodes
it consumes, the bytes it produces for one training batch and its forward+backward seconds
on the device and on the server, plus the link between them. It is plain data (no torch),
so a profile measured on a device can be planned on a laptop.

The JSON form is described in ``docs/profile-format.md``. Unknown fields are kept in ``extra`` and
written back, so tools can attach module paths, FLOPs or hardware names freely.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_split.planning.units import bytes_per_s, format_link

FORMAT = "lightning-split-profile/1"
NODE_KINDS = ("input", "op")


class ProfileError(ValueError):
    """A profile is malformed: the message names the node or field and what is wrong."""


@dataclass(frozen=True)
class Link:
    """The network between device and server.

    Attributes:
        uplink_bytes_per_s: device to server throughput.
        downlink_bytes_per_s: server to device throughput.
        rtt_s: round-trip time of one request/reply exchange.
        message_s: fixed cost of one micro-batch round trip beyond ``rtt_s`` (framing, scheduling),
            charged ``2 * M`` times per step by the pipelined cost model; ``None`` when unknown
            (counted as 0, and left out of the JSON).
    """

    uplink_bytes_per_s: float
    downlink_bytes_per_s: float
    rtt_s: float = 0.0
    message_s: float | None = None

    @classmethod
    def from_mbps(cls, uplink_mbps: float, downlink_mbps: float | None = None, rtt_ms: float = 0.0) -> Link:
        """Build a link from megabits per second and milliseconds (downlink defaults to uplink)."""
        down = uplink_mbps if downlink_mbps is None else downlink_mbps
        return cls(bytes_per_s(uplink_mbps), bytes_per_s(down), rtt_ms / 1e3)

    @classmethod
    def parse(cls, text: str) -> Link:
        """Parse ``"10mbit,20ms"``, ``"10mbit/50mbit,5ms"`` (uplink/downlink) or ``"unlimited"``.

        Rates take ``bit``, ``kbit``, ``mbit``, ``gbit`` (or ``kbps``/``mbps``/``gbps``) or
        ``B``/``KB``/``MB``/``GB`` per second; delays ``us``, ``ms`` or ``s`` (round trip).
        """
        parts = [p.strip() for p in text.replace(" ", "").split(",") if p.strip()]
        if not parts:
            raise ProfileError("empty link description; expected e.g. '10mbit,20ms'")
        rates, rtt = parts[0], 0.0
        if len(parts) > 2:
            raise ProfileError(f"link {text!r}: expected 'RATE[/RATE][,DELAY]'")
        if len(parts) == 2:
            rtt = _parse_unit(parts[1], _DELAY_UNITS, text)
        up_text, _, down_text = rates.partition("/")
        up = _parse_rate(up_text, text)
        down = _parse_rate(down_text, text) if down_text else up
        return cls(up, down, rtt)

    def validate(self) -> None:
        for name in ("uplink_bytes_per_s", "downlink_bytes_per_s"):
            value = getattr(self, name)
            if not ((value > 0 and math.isfinite(value)) or value == math.inf):
                raise ProfileError(f"link.{name} must be a positive number of bytes per second, got {value!r}")
        if not (self.rtt_s >= 0 and math.isfinite(self.rtt_s)):
            raise ProfileError(f"link.rtt_s must be a finite number of seconds >= 0, got {self.rtt_s!r}")
        if self.message_s is not None and not _is_seconds(self.message_s):
            raise ProfileError(f"link.message_s must be a finite number of seconds >= 0, got {self.message_s!r}")

    @property
    def per_message_s(self) -> float:
        """``message_s``, with 0 for a link that does not know it."""
        return 0.0 if self.message_s is None else float(self.message_s)

    def describe(self) -> str:
        """The link for people: ``"100 Mbit/s up, 100 Mbit/s down, rtt 2 ms"``."""
        return format_link(self.uplink_bytes_per_s, self.downlink_bytes_per_s, self.rtt_s)

    @property
    def seconds_per_byte_round_trip(self) -> float:
        """Seconds to send one byte one way and its gradient byte back (up + down)."""
        return 1.0 / self.uplink_bytes_per_s + 1.0 / self.downlink_bytes_per_s

    def to_json(self) -> dict[str, float]:
        data = {
            "uplink_bytes_per_s": self.uplink_bytes_per_s,
            "downlink_bytes_per_s": self.downlink_bytes_per_s,
            "rtt_s": self.rtt_s,
        }
        if self.message_s is not None:
            data["message_s"] = self.message_s
        return data


#: Link assumed when none is given or measured: a Wi-Fi-class edge link, 100 Mbit/s each way, 2 ms rtt.
DEFAULT_LINK = Link.from_mbps(100.0, 100.0, rtt_ms=2.0)

_RATE_UNITS = {
    "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
    "bps": 1 / 8, "kbps": 1e3 / 8, "mbps": 1e6 / 8, "gbps": 1e9 / 8,
    "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9,
}  # fmt: skip
_DELAY_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _parse_rate(text: str, whole: str) -> float:
    if text.lower() in ("unlimited", "inf"):
        return math.inf
    value = _parse_unit(text.lower(), _RATE_UNITS, whole)
    if value <= 0:
        raise ProfileError(f"link {whole!r}: a rate must be positive")
    return value


def _parse_unit(text: str, units: Mapping[str, float], whole: str) -> float:
    for unit in sorted(units, key=len, reverse=True):
        if text.lower().endswith(unit):
            number = text[: len(text) - len(unit)]
            try:
                return float(number) * units[unit]
            except ValueError:
                break
    raise ProfileError(f"link {whole!r}: cannot read {text!r}; use units {', '.join(units)}")


#: Optional node fields (``lightning-split-profile/1`` readers that do not need them ignore them):
#: byte counts, forward shares of ``device_s`` / ``server_s`` and their parts a micro-batch pays whatever its size.
OPTIONAL_NODE_FIELDS = (
    "param_bytes",
    "device_mem_bytes",
    "device_fwd_s",
    "server_fwd_s",
    "device_fixed_s",
    "server_fixed_s",
)
_REQUIRED_NODE_FIELDS = ("name", "kind", "inputs", "out_bytes", "device_s", "server_s")


@dataclass(frozen=True)
class NodeCost:
    """One vertex of the cost graph (one torch.fx node).

    Attributes:
        name: unique node name (the fx node name).
        kind: ``"input"`` for model inputs (always on the device), ``"op"`` otherwise.
        inputs: names of the nodes whose outputs this node consumes.
        out_bytes: bytes of the tensors this node produces for one training batch.
        device_s: forward + backward seconds on the device for one batch.
        server_s: forward + backward seconds on the server for one batch.
        extra: every further field of the node (module path, op, FLOPs, ...), kept verbatim and
            in order, so a profile file reads and writes back unchanged.
        param_bytes: bytes of the parameters and buffers the node reads (private inputs: a node
            is *raw* when it and all its ancestors read none). ``None`` when unknown.
        device_mem_bytes: the node's training footprint on the device (parameters, gradients,
            optimizer state, saved activations), for a device memory budget. ``None`` when unknown.
        device_fwd_s: the forward share of ``device_s`` (``None``: one third of it).
        server_fwd_s: the forward share of ``server_s`` (``None``: one third of it).
        device_fixed_s: the part of ``device_s`` that does not shrink with the batch (per-op
            overheads): a micro-batch of ``1/M`` of the batch costs ``device_fixed_s +
            (device_s - device_fixed_s) / M`` (``None``: 0, each micro-batch costs its share).
        server_fixed_s: the same for ``server_s``.

    The optional fields are typed views: a value found under the same key in ``extra``
    (where :func:`~lightning_split.costs.estimate.estimate_profile` and older readers put
    ``param_bytes``) is read as the field, and a field given explicitly also updates that key
    of ``extra`` when it is there, so the two never disagree. They are written to JSON only when
    set.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    out_bytes: int
    device_s: float
    server_s: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    param_bytes: int | None = None
    device_mem_bytes: int | None = None
    device_fwd_s: float | None = None
    server_fwd_s: float | None = None
    device_fixed_s: float | None = None
    server_fixed_s: float | None = None

    def __post_init__(self) -> None:
        extra = self.extra
        for key in OPTIONAL_NODE_FIELDS:
            value = getattr(self, key)
            if value is None:
                value = extra.get(key)
            if key.endswith("_bytes") and isinstance(value, float) and value.is_integer():
                value = int(value)
            object.__setattr__(self, key, value)
            if value is not None and key in extra and extra[key] != value:
                extra = {**extra, key: value}
        object.__setattr__(self, "extra", extra)

    def forward_s(self, side: str) -> float:
        """The forward share of this node's time on ``side`` (``"device"`` or ``"server"``).

        The measured ``device_fwd_s`` / ``server_fwd_s`` when known, otherwise one third of the
        forward + backward time (backward costs about twice the forward).
        """
        total, forward = (self.device_s, self.device_fwd_s) if side == "device" else (self.server_s, self.server_fwd_s)
        return total / 3.0 if forward is None else float(forward)

    def stage_s(self, side: str, micro_batches: int = 1) -> tuple[float, float]:
        """Forward and backward seconds of this node on ``side`` for ``micro_batches`` micro-batches in all.

        ``M`` micro-batches of ``1/M`` of the batch each cost ``fixed + (total - fixed) / M``, so
        together they cost the whole batch's time plus ``(M - 1) * fixed``; the extra is split
        between forward and backward as the node's time is. With ``M = 1`` or no fixed part this
        is ``(forward_s(side), total - forward_s(side))``.
        """
        if side == "device":
            total, fixed = self.device_s, self.device_fixed_s
        else:
            total, fixed = self.server_s, self.server_fixed_s
        forward = self.forward_s(side)
        if micro_batches == 1 or not fixed:
            return forward, total - forward
        extra = (micro_batches - 1) * float(fixed)
        fraction = forward / total if total > 0 else 1.0 / 3.0
        return forward + extra * fraction, total - forward + extra * (1.0 - fraction)

    def validate(self) -> None:
        """Check the numbers of this node; raise :class:`ProfileError` naming the node and field."""
        if self.out_bytes < 0:
            raise ProfileError(f"node {self.name!r} has negative out_bytes {self.out_bytes}")
        for attr in ("device_s", "server_s"):
            value = getattr(self, attr)
            if not _is_seconds(value):
                raise ProfileError(f"node {self.name!r} has {attr}={value!r}; expected finite seconds >= 0")
        for attr in ("param_bytes", "device_mem_bytes"):
            value = getattr(self, attr)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ProfileError(f"node {self.name!r} has {attr}={value!r}; expected an integer number of bytes >= 0")
        shares = (
            ("device_fwd_s", "device_s", "the forward share of forward + backward"),
            ("server_fwd_s", "server_s", "the forward share of forward + backward"),
            ("device_fixed_s", "device_s", "the part a micro-batch pays whatever its size"),
            ("server_fixed_s", "server_s", "the part a micro-batch pays whatever its size"),
        )
        for attr, total, meaning in shares:
            value = getattr(self, attr)
            if value is None:
                continue
            if not _is_seconds(value):
                raise ProfileError(f"node {self.name!r} has {attr}={value!r}; expected finite seconds >= 0")
            if value > getattr(self, total):
                raise ProfileError(
                    f"node {self.name!r} has {attr}={value!r} above its {total}={getattr(self, total)!r} ({meaning})"
                )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "inputs": list(self.inputs),
            "out_bytes": self.out_bytes,
            "device_s": self.device_s,
            "server_s": self.server_s,
        }
        for key in OPTIONAL_NODE_FIELDS:
            value = getattr(self, key)
            if value is not None and key not in self.extra:
                data[key] = value
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeCost:
        missing = sorted(set(_REQUIRED_NODE_FIELDS) - set(data))
        if missing:
            raise ProfileError(f"node {data.get('name', '?')!r} lacks field(s) {', '.join(missing)}")
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            inputs=tuple(str(i) for i in data["inputs"]),
            out_bytes=int(data["out_bytes"]),
            device_s=float(data["device_s"]),
            server_s=float(data["server_s"]),
            extra={k: v for k, v in data.items() if k not in _REQUIRED_NODE_FIELDS},
        )


def _is_seconds(value: Any) -> bool:
    """Whether ``value`` is a finite number of seconds >= 0 (any real number type)."""
    try:
        return bool(value >= 0 and math.isfinite(value))
    except TypeError:
        return False


@dataclass
class Profile:
    """A model's cost graph plus the link: everything the planner needs.

    Attributes:
        nodes: nodes in graph order (every node after its inputs).
        outputs: names of the nodes whose tensors the model returns (they go back to the device).
        link: the network between device and server.
        extra: top-level fields beyond the format (batch size, hardware, model name, ...).
    """

    nodes: list[NodeCost]
    outputs: list[str]
    link: Link
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def node(self, name: str) -> NodeCost:
        return self._index()[name]

    def _index(self) -> dict[str, NodeCost]:
        return {node.name: node for node in self.nodes}

    def consumers(self) -> dict[str, list[str]]:
        """Map each node name to the names of the nodes that consume its output."""
        users: dict[str, list[str]] = {node.name: [] for node in self.nodes}
        for node in self.nodes:
            for source in dict.fromkeys(node.inputs):
                users[source].append(node.name)
        return users

    def validate(self) -> None:
        """Check names, order, kinds and numbers; raise :class:`ProfileError` naming the problem."""
        self.link.validate()
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                raise ProfileError(f"node name {node.name!r} appears twice")
            if node.kind not in NODE_KINDS:
                raise ProfileError(f"node {node.name!r} has kind {node.kind!r}; expected one of {NODE_KINDS}")
            if node.kind == "input" and node.inputs:
                raise ProfileError(f"input node {node.name!r} must not consume other nodes")
            for source in node.inputs:
                if source not in seen:
                    raise ProfileError(
                        f"node {node.name!r} consumes {source!r}, which is not an earlier node "
                        "(nodes must be in graph order, every node after its inputs)"
                    )
            node.validate()
            seen.add(node.name)
        for name in self.outputs:
            if name not in seen:
                raise ProfileError(f"output {name!r} is not a node of the profile")

    def with_link(self, link: Link) -> Profile:
        """The same graph and node costs over another link."""
        return Profile(list(self.nodes), list(self.outputs), link, dict(self.extra))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "link": self.link.to_json(),
            "nodes": [node.to_json() for node in self.nodes],
            "outputs": list(self.outputs),
        }
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        if not isinstance(data, Mapping):
            raise ProfileError("a profile must be a JSON object")
        if data.get("format") != FORMAT:
            raise ProfileError(f"unknown profile format {data.get('format')!r}; expected {FORMAT!r}")
        for key in ("link", "nodes", "outputs"):
            if key not in data:
                raise ProfileError(f"profile lacks the field {key!r}")
        link_data = data["link"]
        try:
            link = Link(
                float(link_data["uplink_bytes_per_s"]),
                float(link_data["downlink_bytes_per_s"]),
                float(link_data.get("rtt_s", 0.0)),
                link_data.get("message_s"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(f"profile link is malformed: {exc!r}") from exc
        nodes = [NodeCost.from_json(node) for node in data["nodes"]]
        known = {"format", "link", "nodes", "outputs"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(nodes, [str(o) for o in data["outputs"]], link, extra)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_json(data)


def chain_profile(
    device_s: Iterable[float],
    server_s: Iterable[float],
    out_bytes: Iterable[int],
    link: Link,
    input_bytes: int = 0,
) -> Profile:
    """A straight chain ``x -> n0 -> n1 -> ...`` (the last node is the output); handy in tests and docs."""
    nodes = [NodeCost("x", "input", (), int(input_bytes), 0.0, 0.0)]
    previous = "x"
    for index, (dev, srv, size) in enumerate(zip(device_s, server_s, out_bytes, strict=True)):
        name = f"n{index}"
        nodes.append(NodeCost(name, "op", (previous,), int(size), float(dev), float(srv)))
        previous = name
    return Profile(nodes, [previous], link)
