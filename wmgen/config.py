"""Frozen dataclass configs with YAML overrides.

Every component has one frozen dataclass whose fields carry their meaning and unit in a comment. Files in
``configs/`` hold only overrides of those defaults. Loading checks three things and names the key in
every error: unknown keys (listing the valid ones), wrong types, and values outside the range declared in
the field's metadata::

    @dataclass(frozen=True)
    class SolverConfig:
        method: Literal["euler", "heun"] = "heun"                         # integration scheme
        steps: int = field(default=32, metadata={"range": (1, None)})      # fixed-step count

    cfg = load_config(SolverConfig, "configs/fast.yaml", overrides={"steps": 8})

Range metadata is plain data (``{"range": (lo, hi)}``, either end ``None`` for open), so packages that
must not import wmgen (``physics``) can declare it too; ``validate`` checks any dataclass instance.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

C = TypeVar("C")

__all__ = ["ConfigError", "from_dict", "load_config", "to_dict", "validate", "load_yaml_overrides"]


class ConfigError(ValueError):
    """A config key is unknown, of the wrong type, or out of range."""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, option, value)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}: {value!r}")
            items = [_coerce(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value, strict=True))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 (PyYAML) reads exponents without a dot, 2e-4, as strings
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _check_range(key: str, f: dataclasses.Field, value: Any) -> None:
    bounds = f.metadata.get("range")
    if bounds is None or value is None:
        return
    lo, hi = bounds
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if isinstance(v, float) and math.isnan(v):
            raise ConfigError(f"{key}: expected a number in [{lo}, {hi}], got nan")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            lo_s = "-inf" if lo is None else lo
            hi_s = "inf" if hi is None else hi
            raise ConfigError(f"{key}: expected a value in [{lo_s}, {hi_s}], got {value!r}")


def _hints(cls: type) -> dict[str, Any]:
    module = typing.cast(Any, __import__(cls.__module__, fromlist=["_"]))
    return get_type_hints(cls, vars(module))


def from_dict(cls: type[C], data: Mapping[str, Any], *, prefix: str = "", base: C | None = None) -> C:
    """Build a ``cls`` from ``data``, starting from ``base`` (or the defaults) and checking every key."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"cls: expected a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)} "
            f"for {cls.__name__}; valid keys: {', '.join(sorted(fields))}"
        )
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = prefix + name
        current = getattr(base, name) if base is not None else None
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, Mapping):
            values[name] = from_dict(hints[name], value, prefix=f"{key}.", base=current)
        else:
            values[name] = _coerce(key, hints[name], value)
        _check_range(key, fields[name], values[name])
    try:
        cfg = dataclasses.replace(base, **values) if base is not None else cls(**values)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err
    validate(cfg, prefix=prefix)
    return cfg


def validate(cfg: Any, *, prefix: str = "") -> None:
    """Check the types and declared ranges of every field of a dataclass instance (recursively)."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, prefix=f"{key}.")
            continue
        _coerce(key, hints[f.name], value)
        _check_range(key, f, value)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) suitable for JSON/YAML."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def load_yaml_overrides(path: str | Path) -> dict[str, Any]:
    """Read a YAML file of overrides; an empty file means no overrides."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of overrides at the top level, got {type(data).__name__}"
        )
    return data


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    section: str | None = None,
) -> C:
    """Defaults of ``cls``, then the YAML file's overrides (optionally one top-level ``section``), then
    ``overrides`` (dotted keys allowed: ``{"solver.steps": 8}``)."""
    cfg = cls()
    if path is not None:
        data = load_yaml_overrides(path)
        if section is not None:
            data = data.get(section, {})
        cfg = from_dict(cls, data, base=cfg)
    if overrides:
        cfg = from_dict(cls, _nest(overrides), base=cfg)
    return cfg


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested
