"""Reading something-something-v2 label files.

A labels file is a JSON list of ``{"id", "label", "template", "placeholders"}``
where the template has ``[something]`` slots. Everything downstream (frames,
vocab, evaluation) goes through ``read_labels`` so bad files fail the same way.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

SLOT = "[something]"


@dataclass(frozen=True)
class Sample:
    id: str
    label: str
    template: str
    placeholders: tuple[str, ...]


def norm_template(t: str) -> str:
    """Key for comparing templates: case, brackets and spacing don't matter."""
    return re.sub(r"\s+", " ", t.replace("[", "").replace("]", "")).strip().lower()


def fill(template: str, placeholders) -> str:
    out = template
    for p in placeholders:
        out = out.replace(SLOT, p, 1)
    return out


def read_labels(path) -> list[Sample]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    try:
        rows = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"labels file {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"labels file {path} is not valid JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(rows, list):
        raise UserError(f"labels file {path}: expected a JSON list of samples, got {type(rows).__name__}")
    out, seen = [], set()
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not {"id", "template"} <= r.keys():
            raise UserError(f"labels file {path}: entry {i} lacks 'id' or 'template'")
        sid = str(r["id"])
        if sid in seen:
            raise UserError(f"labels file {path}: duplicate id {sid}")
        seen.add(sid)
        ph = tuple(str(p) for p in r.get("placeholders") or ())
        label = str(r.get("label") or fill(r["template"], ph))
        out.append(Sample(sid, label, str(r["template"]), ph))
    return out


def select_templates(samples: list[Sample], templates) -> list[Sample]:
    """Keep samples whose template is one of ``templates`` (none given: keep all)."""
    if not templates:
        return list(samples)
    known = {norm_template(s.template): s.template for s in samples}
    wanted = set()
    for t in templates:
        k = norm_template(t)
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=1)
            hint = f"; did you mean {known[close[0]]!r}?" if close else ""
            raise UserError(f"unknown template {t!r}: no sample in the labels uses it{hint}")
        wanted.add(k)
    return [s for s in samples if norm_template(s.template) in wanted]
