"""Frozen dataclasses <-> plain JSON values, driven by their type hints.

The outputs contract carries the derived spec as JSON; this turns it back into the same
objects (enums, tuples, frozensets, nested dataclasses, optionals) so that every reader gets
exactly the spec the provisioner derived, without re-deriving it from the config.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Mapping


def to_plain(value: Any, *, skip: frozenset[str] = frozenset()) -> Any:
    """JSON-able, order-stable form of `value`; dataclass fields named in `skip` are left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name), skip=skip) for f in dataclasses.fields(value)
                if f.name not in skip}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (frozenset, set)):
        return sorted(to_plain(v, skip=skip) for v in value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v, skip=skip) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, skip=skip) for k, v in value.items()}
    return value


class DecodeError(ValueError):
    pass


def from_plain(cls: Any, data: Any, where: str = "") -> Any:
    """Rebuild a value of type `cls` from `to_plain` output; DecodeError names the path that is wrong."""
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if cls is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return from_plain(option, data, where)
            except (DecodeError, TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise DecodeError(f"{where or 'value'}: {data!r} fits none of {options}: {'; '.join(errors)}")
    if dataclasses.is_dataclass(cls):
        if not isinstance(data, Mapping):
            raise DecodeError(f"{where or cls.__name__}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                values[f.name] = from_plain(hints[f.name], data[f.name], f"{where}.{f.name}".lstrip("."))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DecodeError(f"{where or cls.__name__}: missing field {f.name!r}")
        return cls(**values)
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return cls(data)
    if origin in (tuple, list, frozenset, set):
        if not isinstance(data, list):
            raise DecodeError(f"{where}: expected a list, got {type(data).__name__}")
        item = args[0] if args else Any
        items = [from_plain(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
        return {tuple: tuple, list: list, frozenset: frozenset, set: set}[origin](items)
    if origin is dict:
        if not isinstance(data, Mapping):
            raise DecodeError(f"{where}: expected an object, got {type(data).__name__}")
        value_type = args[1] if len(args) == 2 else Any
        return {k: from_plain(value_type, v, f"{where}.{k}") for k, v in data.items()}
    if cls in (str, int, float, bool):
        if cls is float and isinstance(data, int) and not isinstance(data, bool):
            return float(data)
        if not isinstance(data, cls) or (cls is int and isinstance(data, bool)):
            raise DecodeError(f"{where}: expected {cls.__name__}, got {data!r}")
        return data
    if cls is type(None):
        if data is not None:
            raise DecodeError(f"{where}: expected null, got {data!r}")
        return None
    raise DecodeError(f"{where}: cannot decode type {cls!r}")
