"""Which prompts a clip grid shows, and their conditions.

Shared by training's clip grids and sweep comparisons; the conditions come from the
vocab's one prompt -> condition path (``Vocab.conditions``), the same as `t2v sample`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data import read_manifest
from .labels import fill
from .sample import conditions
from .vocab import Vocab


def clip_prompts(data: Path, n_seen: int = 3, n_heldout: int = 2) -> list[tuple[str, str, bool]]:
    """(template, object, held_out) rows for clip grids: common training pairs, then
    pairs of a seen object with a template it never had in training (e.g. the reversed direction)."""
    m = read_manifest(data)
    m["object"] = m["placeholders"].map(lambda p: " ".join(json.loads(p)))
    pairs = m.groupby(["template", "object"]).size().sort_values(ascending=False, kind="stable")
    seen = [(t, o, False) for t, o in list(pairs.index)[:n_seen]]
    have = set(pairs.index)
    held = [(t, o, True) for _, o, _ in seen for t in sorted(set(m["template"])) if (t, o) not in have]
    return seen + held[:n_heldout]


def prompt_conditions(vocab_dir: Path, prompts) -> torch.Tensor:
    """(template, object, held_out) rows -> conditions, through the same path as `t2v sample`."""
    return conditions(Vocab(vocab_dir), [fill(t, [o]) for t, o, _ in prompts])
