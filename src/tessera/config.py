"""Typed configuration sections read from ``params.yaml``.

Every component has a frozen ``Config`` dataclass with commented defaults. ``from_section`` builds
one from a mapping and refuses unknown keys by name, so a typo in ``params.yaml`` is an error rather
than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tessera.errors import ConfigError

T = TypeVar("T")

PRESETS = ("demo", "cpu", "gpu")


def load_params(path: str | Path = "params.yaml", preset: str | None = None) -> dict[str, Any]:
    """Load ``params.yaml``; with ``preset`` (cpu, gpu), overlay ``params.<preset>.yaml`` beside it.

    A preset file holds only the keys that differ; sections are merged key by key.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the project root or pass --params")
    params = yaml.safe_load(path.read_text()) or {}
    if preset and preset != "demo":
        overlay_path = path.with_name(f"{path.stem}.{preset}{path.suffix}")
        if not overlay_path.exists():
            raise ConfigError(f"preset {preset!r}: {overlay_path} not found (presets: {PRESETS})")
        overlay = yaml.safe_load(overlay_path.read_text()) or {}
        params = deep_merge(params, overlay)
    return params


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``overlay``, merging nested mappings key by key."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def from_section(cls: type[T], section: Mapping[str, Any] | None, name: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys raise :class:`ConfigError`."""
    section = dict(section or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(section) - set(fields))
    if unknown:
        where = f"params section {name!r}" if name else cls.__name__
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in section.items():
        kwargs[key] = _coerce(hints.get(key), value, f"{name}.{key}" if name else key)
    return cls(**kwargs)


def section_of(cls: type[T], params: Mapping[str, Any], name: str) -> T:
    """Build ``cls`` from ``params[name]`` (missing section: all defaults)."""
    return from_section(cls, params.get(name), name)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Light coercion: tuples from YAML lists, floats from ints; anything else is checked loosely."""
    if hint is None or value is None:
        return value
    origin = typing.get_origin(hint)
    if origin in (tuple,) and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        return value
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (tuples as lists), fit for JSON, YAML and checkpoints."""
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
