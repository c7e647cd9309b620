"""Dataclass configs read from YAML (``yaml.safe_load``) with CLI overrides.

Unknown keys are an error that lists the valid ones; values are coerced to the
field's declared type where that is unambiguous (int, float, bool, str; a bool is
never read as a number).

Ranges and choices are declared once, on the field, with :func:`param`, and checked
in one place, :func:`check_constraints`, which :func:`build_config` runs on every
config it builds (before the config's own ``validate()``)::

    @dataclass
    class PGDConfig:
        step_size: float = param(1 / 255, gt=0, doc="Linf step per iteration")
        saturation: Optional[float] = param(32 / 255, gt=0)   # None is allowed: Optional
        max_steps: int = param(200, ge=1)
        loss: str = param("ce", choices=("ce", "margin"))
        names: list = param(default_factory=list, doc="...")

        def validate(self) -> None:      # only for checks across fields
            ...

``ge``/``gt``/``le``/``lt`` bound a number (int or float field); ``choices`` lists the
allowed values; ``doc`` is the help text (``jr-train`` builds its options from it and
from the default). The type comes from the annotation: an ``int`` field takes only
integers (not bools), a ``float`` field any real number (ints too) and — when bounded —
only finite ones, a ``bool`` field only true/false; ``Optional[...]`` also allows None.
A violation is one :class:`ConfigError` naming where, the key, the allowed range and
the value, e.g. ``cw search config: lr must be a number > 0, got -1.0``.
:func:`check_value` checks one value against a :class:`Spec` (for option mappings that
are not dataclasses); :func:`spec_of` reads a field's :class:`Spec` back.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")

_SPEC_KEY = "robustbench_jr.spec"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What :func:`param` declares on a field: bounds, choices and help text."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    choices: Optional[tuple] = None
    doc: Optional[str] = None

    @property
    def bounded(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def describe(self, kind: Any = None, optional: bool = False) -> str:
        """The allowed values in words: ``a number in [0, 1)``, ``an integer ≥ 1``,
        ``'sgd' or 'adam'``, ``one of auto, batched, loop``; ``(or null)`` if Optional."""
        if self.choices is not None:
            c = [str(v) for v in self.choices]
            text = (" or ".join(repr(v) for v in self.choices) if len(c) == 2
                    else f"one of {', '.join(c)}")
        elif kind is bool:
            text = "true or false"
        else:
            noun = {int: "an integer", float: "a number", str: "a string"}.get(kind, "")
            lo = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None)
            hi = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None)
            if lo and hi:
                rng = f"in {lo}, {hi}"
            elif lo:
                rng = f"{'≥' if self.ge is not None else '>'} {lo[1:]}"
            elif hi:
                rng = f"{'≤' if self.le is not None else '<'} {hi[:-1]}"
            else:
                rng = ""
            text = " ".join(t for t in (noun, rng) if t) or "a value"
        return f"{text} (or null)" if optional else text


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def param(default: Any = dataclasses.MISSING, *, ge: Optional[float] = None, gt: Optional[float] = None,
          le: Optional[float] = None, lt: Optional[float] = None, choices: Optional[typing.Iterable] = None,
          doc: Optional[str] = None, default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its allowed range or choices and help text declared on it.

    ``lr: float = param(0.1, gt=0, doc="Initial learning rate")`` — see the module
    docstring. :func:`build_config` checks it (:func:`check_constraints`).
    """
    spec = Spec(ge=ge, gt=gt, le=le, lt=lt, choices=None if choices is None else tuple(choices), doc=doc)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_SPEC_KEY: spec})


def spec_of(f: dataclasses.Field) -> Optional[Spec]:
    """The :class:`Spec` a field was declared with by :func:`param`, or None."""
    return f.metadata.get(_SPEC_KEY)


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """(X, True) for Optional[X] / X | None, else (annotation, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1 and len(args) == 2:
            return non_none[0], True
    return annotation, False


def check_value(key: str, value: Any, annotation: Any, spec: Optional[Spec], where: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` fits ``annotation`` (int, float, bool,
    str, Optional[...]) and ``spec``'s range and choices."""
    spec = spec or Spec()
    kind, optional = _split_optional(annotation)
    if value is None and optional:
        return
    ok = value is not None
    if ok and kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ok and kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (not spec.bounded or math.isfinite(value))
    elif ok and kind is bool:
        ok = isinstance(value, bool)
    elif ok and kind is str:
        ok = isinstance(value, str)
    if ok and spec.choices is not None:
        ok = value in spec.choices
    if ok and spec.bounded:
        ok = ((spec.ge is None or value >= spec.ge) and (spec.gt is None or value > spec.gt)
              and (spec.le is None or value <= spec.le) and (spec.lt is None or value < spec.lt))
    if not ok:
        raise ConfigError(f"{where}: {key} must be {spec.describe(kind, optional)}, got {value!r}")


def check_constraints(obj: Any, where: str = "config") -> None:
    """Check every field of dataclass ``obj`` declared with :func:`param` (its type,
    range and choices); one :class:`ConfigError` for the first violation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        spec = spec_of(f)
        if spec is not None:
            check_value(f.name, getattr(obj, f.name), hints.get(f.name, Any), spec, where)


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
    if isinstance(value, bool) and annotation in (int, float):
        raise ConfigError(f"config key {key!r}: cannot read {value!r} as {annotation.__name__}")
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

    A key that a layer does not hold is "not given"; a key it holds with the value
    ``None`` (YAML ``null``) is an explicit null and sets the field to None, over the
    default and over earlier layers (``searches: {pgd: {saturation: null}}`` means "no
    saturation box", not "the default box"). Callers whose layers hold None for "not
    given" — command-line options the user did not type — drop those keys first
    (:func:`given`). A field that is not Optional refuses the null (:func:`check_constraints`).
    The result is checked: declared ranges/choices (:func:`check_constraints`), then
    the config's own ``validate()`` if it has one (cross-field checks).
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
                kind, optional = _split_optional(hints[norm])
                if not optional and kind in (int, float, bool, str):
                    spec = spec_of(fields[norm]) or Spec()
                    raise ConfigError(f"{where}: {key} must be {spec.describe(kind)}, got null "
                                      f"(null is an explicit value here; leave the key out for the default)")
            merged[norm] = _coerce(value, hints[norm], key)
    try:
        obj = cls(**merged)
    except TypeError as exc:
        raise ConfigError(f"incomplete {where}: {exc}") from None
    check_constraints(obj, where)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def given(layer: Optional[Mapping[str, Any]]) -> dict:
    """The keys of ``layer`` whose value is not None: a layer of command-line options,
    where None means "the user did not type it", made fit for :func:`build_config`
    (where None means an explicit null)."""
    return {k: v for k, v in (layer or {}).items() if v is not None}


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-safe dict of a dataclass config (or of a mapping of options)."""
    def clean(v):
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    items = cfg.items() if isinstance(cfg, Mapping) else dataclasses.asdict(cfg).items()
    return {k: clean(v) for k, v in items}
