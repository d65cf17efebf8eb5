"""Typed, frozen method configs: the base class, runtime type checks and validated overrides.

A method's config is a frozen dataclass holding its paper's defaults. User overrides (CLI
``--set key=value``, sweep lines) are checked against the field annotations before anything runs
(:func:`config_problems` lists every problem at once) and coerced where YAML/JSON cannot express
the type (lists to tuples, ints to floats), then applied with :func:`build_config`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from methods.errors import MethodError
from methods.synset import plain


@dataclass(frozen=True)
class MethodConfig:
    """Base class of every method's frozen config dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


def _check_type(value: Any, annotation: Any) -> bool:
    """Loose runtime check of a config value against its annotation (for user overrides)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return any(_check_type(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if annotation is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or _float_text(value) is not None
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if not args:
            return True
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return all(_check_type(v, args[0]) for v in value)
        if origin is tuple:
            return len(value) == len(args) and all(_check_type(v, a) for v, a in zip(value, args))
        return all(_check_type(v, args[0]) for v in value)
    if origin in (dict, Mapping) or annotation in (dict,):
        if not isinstance(value, Mapping):
            return False
        if len(args) == 2:
            return all(_check_type(k, args[0]) and _check_type(v, args[1]) for k, v in value.items())
        return True
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _coerce(value: Any, annotation: Any) -> Any:
    """Turn YAML/JSON lists into tuples where the annotation asks for a tuple, ints into floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        for a in args:
            if a is not type(None) and _check_type(value, a):
                return _coerce(value, a)
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        return _float_text(value)
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        return tuple(_coerce(v, a) for v, a in zip(value, args)) if args else tuple(value)
    if origin is dict and isinstance(value, Mapping) and len(args) == 2:
        return {k: _coerce(v, args[1]) for k, v in value.items()}
    return value


def config_problems(config_cls: type, overrides: Mapping[str, Any]) -> list[str]:
    """Every problem with ``overrides`` for ``config_cls`` (unknown keys, wrong types)."""
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    problems = []
    for key, value in overrides.items():
        if key not in names:
            problems.append(
                f"unknown config key '{key}' for {config_cls.__name__}; valid keys: "
                + ", ".join(names)
            )
        elif not _check_type(value, hints[key]):
            problems.append(
                f"config key '{key}' must be {_type_name(hints[key])}, got {value!r} "
                f"({type(value).__name__})"
            )
    return problems


def _float_text(value: Any) -> Any:
    """``value`` as a float when it is text YAML left unparsed (``1e-5``: YAML 1.1 wants a dot),
    else None."""
    if not isinstance(value, str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


_NAMES = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


def _type_name(annotation: Any) -> str:
    """How messages name a type: ``Optional[float]`` -> 'a number or null'."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation in _NAMES:
        return _NAMES[annotation]
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def build_config(config_cls: type, overrides: Optional[Mapping[str, Any]] = None) -> Any:
    """``config_cls`` with ``overrides`` applied, validated; raises :class:`MethodError`."""
    overrides = dict(overrides or {})
    problems = config_problems(config_cls, overrides)
    if problems:
        raise MethodError("; ".join(problems))
    hints = typing.get_type_hints(config_cls)
    values = {k: _coerce(v, hints[k]) for k, v in overrides.items()}
    config = config_cls(**values)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config
