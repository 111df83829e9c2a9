"""YAML configs with ``key=value`` CLI overrides, resolved into dataclasses with clear errors."""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config file or override is malformed or names an unknown option."""


def option(default: Any = MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A settings field with its help text: TRL's ``field(default=…, metadata={"help": …})`` habit, on one
    line. The dataclass stays the one home of the default and of its explanation; ``adpo train --help``
    and ``adpo eval --help`` read both from here (:mod:`adpo.utils.flags`)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def without_neutral(options: dict[str, Any], neutral: dict[str, Any]) -> dict[str, Any]:
    """``options`` less the ones added after content was keyed by them, where they hold the value that
    reproduces the earlier content (``neutral``): caches keyed by the options stay valid across the upgrade."""
    return {k: v for k, v in options.items() if k not in neutral or v != neutral[k]}


def help_of(f: dataclasses.Field) -> str:
    """A field's help text ("" when it has none)."""
    return str(f.metadata.get("help", ""))


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``section.key=value`` pairs; values are parsed as YAML scalars/lists (``1e-3``, ``[0.03, 1]``)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = _number(yaml.safe_load(raw))
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value: {e}") from e
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[leaf] = value
    return out


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; users mean a float."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def build(cls: type[T], options: dict[str, Any] | None, section: str) -> T:
    """Instantiate dataclass ``cls`` from ``options``; unknown keys name the section and the valid ones."""
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} in section '{section}'; known: {sorted(known)}")
    try:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"section '{section}': {e}") from e
