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
    except RecursionError:
        raise UserError(f"labels file {path} nests too deeply to be a labels list") from None
    if not isinstance(rows, list):
        raise UserError(f"labels file {path}: expected a JSON list of samples, got {type(rows).__name__}")
    out, seen = [], set()
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not {"id", "template"} <= r.keys():
            raise UserError(f"labels file {path}: entry {i} lacks 'id' or 'template'")
        sid = check_id(r["id"], f"labels file {path}: entry {i}")
        if sid in seen:
            raise UserError(f"labels file {path}: duplicate id {sid}")
        seen.add(sid)
        ph = r.get("placeholders") or []
        # A string here would be split into its characters; anything but text is not a caption word.
        if not isinstance(ph, list) or not all(isinstance(p, str) for p in ph):
            raise UserError(f"labels file {path}: entry {i} (id {sid}): 'placeholders' must be a list of "
                            f"strings, got {json.dumps(ph)[:80]}")
        for key in ("template", "label"):
            if key in r and not isinstance(r[key], str):
                raise UserError(f"labels file {path}: entry {i} (id {sid}): '{key}' must be a string")
        label = r.get("label") or fill(r["template"], ph)
        out.append(Sample(sid, label, r["template"], tuple(ph)))
    return out


# A video id names a file in --videos: no separators, no "..", no glob characters, no leading dot.
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


def check_id(value, where: str) -> str:
    """A sample id as a safe file-name stem (ints, as some label files write them, become text);
    an id that could reach outside the videos folder is a UserError."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UserError(f"{where}: id must be a string, got {json.dumps(value)[:80]}")
    sid = str(value)
    if not _ID.fullmatch(sid) or ".." in sid:
        raise UserError(f"{where}: id {sid[:80]!r} is not a plain file name (letters, digits, '_', '-', '.'); "
                        "ids name files inside --videos")
    return sid


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
