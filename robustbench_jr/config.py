"""Dataclass configs read from YAML (``yaml.safe_load``) with CLI overrides.

Unknown keys are an error that lists the valid ones; values are coerced to the
field's declared type where that is unambiguous (int, float, bool, str).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping from ``path`` with ``yaml.safe_load``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at top level, got {type(data).__name__}")
    return data


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], key)
        return value
    try:
        if annotation is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
        if origin in (list, tuple) and isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
            return [_coerce(v, args[0], key) for v in items] if args else items
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r}: cannot read {value!r} as {getattr(annotation, '__name__', annotation)}") from None
    return value


def build_config(cls: type[T], *layers: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from mappings applied in order (later layers win).

    ``None`` values in a layer mean "not given" and do not override earlier layers.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    merged: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        for key, value in layer.items():
            norm = key.replace("-", "_")
            if norm not in fields:
                raise ConfigError(
                    f"unknown key {key!r} in {where}; valid keys: {', '.join(sorted(fields))}"
                )
            if value is None:
                continue
            merged[norm] = _coerce(value, hints[norm], key)
    try:
        obj = cls(**merged)
    except TypeError as exc:
        raise ConfigError(f"incomplete {where}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-safe dict of a dataclass config."""
    def clean(v):
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return {k: clean(v) for k, v in dataclasses.asdict(cfg).items()}
