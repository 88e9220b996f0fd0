"""Strict, typed stage configs: unknown or mistyped parameters are errors, never warnings."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping

from yolo_compile.errors import ConfigError

TARGETS = ("auto", "tensorrt", "cpu")


def path_field(default: Any = dataclasses.MISSING, *, kind: str = "file") -> Any:
    """Declare a config field whose value names a file or folder: the one declaration the workflow (relative paths,
    the manifest's inputs), validation and the stage key (its content hashed) all read, through
    pipeline.registry.path_params. kind 'json': a path only when the value ends with .json (else text)."""
    if kind not in ("file", "json"):
        raise ValueError(f"path_field kind {kind!r}: expected 'file' or 'json'")
    return dataclasses.field(default=default, metadata={"path": kind})


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Return value converted to the field type, or raise ConfigError naming the parameter."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"parameter '{name}': expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        return tuple(_coerce(name, v, item) for v in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"parameter '{name}': expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"parameter '{name}': expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"parameter '{name}': expected an integer, got {value!r}") from None
    if kind is float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"parameter '{name}': expected a number, got {value!r}") from None
        if out != out:
            raise ConfigError(f"parameter '{name}': NaN is not a threshold; give a number")
        return out
    if kind is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"parameter '{name}': expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, params: Mapping[str, Any]):
    """Return cls(**params) with every value coerced to its field type; unknown names are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown parameter(s) {', '.join(unknown)}; expected some of: {', '.join(fields)}"
        )
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in params.items()}
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{cls.__name__}: missing required parameter(s) {', '.join(missing)}")
    return cls(**kwargs)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless value is one of choices."""
    if value not in choices:
        raise ConfigError(f"parameter '{name}' = {value!r}: expected one of {', '.join(choices)}")


def check_positive(name: str, value: float) -> None:
    """Raise ConfigError unless value > 0."""
    if not value > 0:
        raise ConfigError(f"parameter '{name}' = {value!r}: must be greater than 0")


def parse_set(items: list[str]) -> dict[str, str]:
    """Return the KEY=VALUE items of repeated --set options as a dict (values stay strings; configs type them)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompileError(f"--set {item!r}: expected key=value, e.g. --set target=cpu")
        out[key.strip()] = value.strip()
    return out
