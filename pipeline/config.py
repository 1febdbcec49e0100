"""Frozen-dataclass config helpers shared by every stage.

A stage config is a frozen dataclass. ``override`` applies typed ``key=value``
strings (the CLI's ``--set``) and rejects unknown keys or bad values with a
clear message; ``to_dict``/``fingerprint`` give what goes into run dirs, shard
attributes and MLflow params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path

import yaml

from .errors import UserError


def _plain(v):
    if dataclasses.is_dataclass(v):
        return to_dict(v)
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def to_dict(cfg) -> dict:
    """A config as JSON-able plain data (paths as strings, tuples as lists)."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def fingerprint(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _parse(value: str, typ, key: str):
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        if value.lower() in ("none", "null"):
            return None
        return _parse(value, next(a for a in args if a is not type(None)), key)
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"--set {key}={value}: must be one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        return tuple(_parse(v, args[0], key) for v in value.split(",") if v)
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is Path:
            return Path(value)
        return typ(value)
    except ValueError:
        raise UserError(f"--set {key}={value}: expected {getattr(typ, '__name__', typ)}") from None


def override(cfg, pairs: list[str]):
    """Return a copy of ``cfg`` with ``key=value`` strings applied (typed)."""
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--set {pair!r}: expected key=value")
        if key not in hints:
            raise UserError(f"--set {key}: unknown key; valid keys: {', '.join(sorted(hints))}")
        changes[key] = _parse(value, hints[key], key)
    return dataclasses.replace(cfg, **changes)


def read_yaml(path, what: str) -> dict:
    """A YAML mapping from ``path``; a missing file or bad YAML is a one-line UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{p}: expected a YAML mapping")
    return doc
