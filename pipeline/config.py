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
import shlex
import types
import typing
from pathlib import Path

import yaml

from .errors import UserError


def plain(v):
    """A value as config.json stores it: dataclasses as dicts, paths as strings, tuples as lists."""
    if dataclasses.is_dataclass(v):
        return to_dict(v)
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    return v


def to_dict(cfg) -> dict:
    """A config as JSON-able plain data (paths as strings, tuples as lists)."""
    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def fingerprint(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _parse(value: str, typ, key: str):
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):  # Optional[X], X | None
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


def set_flags(pairs) -> str:
    """``--set key=value`` flags, shell-quoted, for (key, plain value) pairs (``to_dict``'s
    values): what ``override`` reads back. Every printed resume command builds them here."""
    spell = lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v)  # noqa: E731
    return " ".join("--set " + shlex.quote(f"{k}={spell(v)}") for k, v in pairs)


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


def _typed(value, typ, where: str):
    """A YAML value checked against a dataclass field's type (ints for int, lists for tuples, ...)."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):  # Optional[X], X | None
        return None if value is None else _typed(value, next(a for a in args if a is not type(None)), where)
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return tuple(_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(items))
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          Path: lambda v: isinstance(v, (str, Path))}.get(typ)
    if ok is not None and not ok(value):
        raise UserError(f"{where}: expected {typ.__name__}, got {value!r}")
    return Path(value) if typ is Path else float(value) if typ is float else value


def from_mapping(cls, given, where: str, fixed: dict | None = None, hidden=()):
    """``cls(**given, **fixed)`` for a mapping from a spec file: unknown keys and values of the
    wrong type are one-line UserErrors naming ``where.key`` (not a TypeError in a job)."""
    fixed = fixed or {}
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise UserError(f"{where}: expected a mapping of keys to values, got {given!r}")
    hints = typing.get_type_hints(cls)
    valid = sorted(set(hints) - set(fixed) - set(hidden))
    bad = sorted(set(given) - set(valid), key=str)
    if bad:
        raise UserError(f"{where}: unknown key(s) {bad}; valid: {', '.join(valid)}")
    return cls(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in given.items()}, **fixed)
