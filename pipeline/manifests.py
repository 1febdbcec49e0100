"""Dataset manifests: the checked-in subset definitions in ``data_manifests/``.

A manifest names a dataset's files (with ``${VAR}`` placeholders for paths
that differ per cluster) and the templates that make up the subset.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .config import read_yaml
from .errors import UserError

REPO_MANIFESTS = Path(__file__).resolve().parents[1] / "data_manifests"


def _expand(value, env: dict, path: Path):
    if isinstance(value, dict):
        return {k: _expand(v, env, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, path) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m[1] not in env:
            raise UserError(f"{path}: ${{{m[1]}}} is not set; export it or pass the path explicitly")
        return env[m[1]]

    return re.sub(r"\$\{(\w+)\}", sub, value)


def load_subset(path, env: dict | None = None, resolve_paths: bool = False) -> dict:
    """Read a manifest; a bare name like ``toy`` means ``data_manifests/toy.yaml``."""
    p = Path(path)
    if not p.exists() and (REPO_MANIFESTS / f"{p}.yaml").exists():
        p = REPO_MANIFESTS / f"{p}.yaml"
    doc = read_yaml(p, "data manifest")
    if not isinstance(doc.get("templates", []), list):
        raise UserError(f"{p}: expected a mapping with a 'templates' list")
    if resolve_paths:
        doc = _expand(doc, dict(os.environ) if env is None else env, p)
    return doc
