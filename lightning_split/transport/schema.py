"""Message base classes: fields checked against their annotations, and a wire form.

A :class:`Message` is a frozen dataclass of plain wire values that checks its fields when
it is made: the check is read from each field's annotation (``int`` refuses a bool,
``float`` takes an int too, ``X | None``, ``list[X]`` checks its items, ``dict[str, X]``
its keys and values, ``Any`` anything) plus the class's own :meth:`Message._check`. A broken
rule raises :class:`~lightning_split.transport.errors.ProtocolError` naming the field, so
an object of these classes is valid whichever side made it. :class:`Op` (something the
device asks) and :class:`Reply` (its result) add the wire forms; the catalogue of ops and
replies is :mod:`lightning_split.transport.messages`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from lightning_split.transport.errors import ProtocolError

__all__ = ["MappingReply", "Message", "Op", "Reply", "clip", "kind", "same"]

_M = TypeVar("_M", bound="Message")
_O = TypeVar("_O", bound="Op")


def kind(value: Any) -> str:
    """What a received value is, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, Tensor):
        return "tensor"
    return type(value).__name__


def _hint_name(hint: Any) -> str:
    if hint is Any:
        return "anything"
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_hint_name(option) for option in typing.get_args(hint))
    container = typing.get_origin(hint) or hint
    return {float: "number", Tensor: "tensor"}.get(container, container.__name__)


def _is_instance(value: Any, cls: type) -> bool:
    if cls is type(None):
        return value is None
    if isinstance(value, bool):
        return cls is bool  # a bool is neither an int nor a number here
    if cls is float:
        return isinstance(value, int | float)
    return isinstance(value, cls)


def _mismatch(value: Any, hint: Any, path: str) -> str | None:
    """Why ``value`` is not a ``hint`` (``path`` says where in the field), or ``None`` when it is."""
    if hint is Any:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if any(_mismatch(value, option, path) is None for option in args):
            return None
        return f"{path} must be {_hint_name(hint)}, got {kind(value)}"
    if not _is_instance(value, origin or hint):
        return f"{path} must be {_hint_name(hint)}, got {kind(value)}"
    if origin is list and args[0] is not Any:
        for index, item in enumerate(value):
            problem = _mismatch(item, args[0], f"{path} item {index}")
            if problem is not None:
                return problem
    if origin is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} key {clip(key)} must be str, got {kind(key)}"
            problem = _mismatch(item, args[1], f"{path} entry {clip(key)}")
            if problem is not None:
                return problem
    return None


def clip(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters (received values can be long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def same(a: Any, b: Any) -> bool:
    """Whether two wire values are equal: tensors by dtype, shape and elements, containers item by item."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and (a.dtype, a.shape) == (b.dtype, b.shape)
            and bool(torch.equal(a.cpu(), b.cpu()))
        )
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    return type(a) is type(b) and a == b


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _has_default(spec: dataclasses.Field[Any]) -> bool:
    return spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING


def _default(spec: dataclasses.Field[Any]) -> Any:
    return spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()  # type: ignore[misc]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Message:
    """A message of the protocol: fields checked when it is made, and a wire form.

    ``label`` names the kind of message in error messages (an op's wire name, ``"reply to
    forward"``). Two messages are equal when their classes and field values are (tensors
    included). Fields with a default hold plain values (never tensors), so that holding the
    default can be told by ``==``.
    """

    label: ClassVar[str] = "message"

    def __eq__(self, other: object) -> bool:
        """Same class and same field values (see :func:`same`)."""
        if type(other) is not type(self):
            return NotImplemented
        return all(same(getattr(self, spec.name), getattr(other, spec.name)) for spec in dataclasses.fields(self))

    __hash__ = None  # type: ignore[assignment]  # fields hold lists, dicts and tensors

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for spec in dataclasses.fields(self):
            problem = _mismatch(getattr(self, spec.name), hints[spec.name], f"field {spec.name!r}")
            if problem is not None:
                raise ProtocolError(problem, spec.name, self.label)
        self._check()

    def _check(self) -> None:
        """Rules beyond the fields' types (none unless a class adds them); raise :class:`ProtocolError`."""

    def _fail(self, field_name: str, problem: str) -> ProtocolError:
        return ProtocolError(f"field {field_name!r} {problem}", field_name, self.label)

    def _wire_fields(self) -> dict[str, Any]:
        """The fields by name, less those that hold their default."""
        values = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if not (_has_default(spec) and value == _default(spec)):
                values[spec.name] = value
        return values

    @classmethod
    def _from_fields(cls: type[_M], value: Any, where: str | None, reserved: frozenset[str] = frozenset()) -> _M:
        """Make a message of the fields in a decoded dict: none unknown, none required missing."""
        where = where or cls.label
        if not isinstance(value, dict):
            raise ProtocolError(f"expected an object, got {kind(value)}", where=where)
        specs = dataclasses.fields(cls)
        known = {spec.name for spec in specs}
        extra = sorted(str(key) for key in set(value) - known - reserved)
        if extra:
            raise ProtocolError(f"unexpected field(s) {', '.join(extra)}", extra[0], where)
        for spec in specs:
            if spec.name not in value and not _has_default(spec):
                raise ProtocolError(f"missing field {spec.name!r}", spec.name, where)
        try:
            return cls(**{key: item for key, item in value.items() if key in known})
        except ProtocolError as exc:
            raise exc.at(where) from None


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Reply(Message):
    """The result of one op; on the wire, a dict of its fields."""

    def to_wire(self) -> Any:
        return self._wire_fields()

    @classmethod
    def from_wire(cls: type[_M], value: Any, where: str | None = None) -> _M:
        return cls._from_fields(value, where)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class MappingReply(Reply):
    """A result that is one mapping (state keys to values); on the wire, the mapping itself."""

    def to_wire(self) -> Any:
        (spec,) = dataclasses.fields(self)
        return getattr(self, spec.name)

    @classmethod
    def from_wire(cls: type[_M], value: Any, where: str | None = None) -> _M:
        (spec,) = dataclasses.fields(cls)
        try:
            return cls(**{spec.name: value})
        except ProtocolError as exc:
            raise exc.at(where or cls.label) from None


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Op(Message):
    """One thing the device asks the server to do.

    Class attributes: ``name`` (the wire name), ``reply`` (the class of its result; ``None``:
    the result is null), ``deferrable`` (needs no answer, so it rides with the next request)
    and ``unordered`` (changes no session state, so it is answered outside the sequence).
    """

    name: ClassVar[str] = ""
    reply: ClassVar[type[Reply] | None] = None
    deferrable: ClassVar[bool] = False
    unordered: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.label = cls.name or cls.__name__

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.name, **self._wire_fields()}

    @classmethod
    def from_wire(cls: type[_O], value: Any, where: str | None = None) -> _O:
        if isinstance(value, dict) and value.get("op") != cls.name:
            raise ProtocolError(f"expected op {cls.name!r}, got {clip(value.get('op'))}", "op", where or cls.label)
        return cls._from_fields(value, where, reserved=frozenset({"op"}))

    @classmethod
    def reply_from_wire(cls, value: Any, where: str | None = None) -> Reply | None:
        """Check the result of this op received from the server."""
        if cls.reply is not None:
            return cls.reply.from_wire(value, where)
        if value is not None:
            raise ProtocolError(f"expected no result (null), got {kind(value)}", where=where or f"reply to {cls.name}")
        return None
