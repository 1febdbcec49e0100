"""Sampling: the EMA generator of a run's newest (or a chosen) checkpoint, for any prompt.

``load_generator`` is shared with evaluation. Prompts go through the run's
vocab exactly as training captions did, so a word never seen in training gets
its vector from the kept fastText model's subwords.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from . import checkpoints
from .clips import grid, to_uint8, write
from .errors import UserError
from .files import atomic_path, write_json
from .models import build_generator, render
from .vocab import Vocab


@dataclass
class Loaded:
    G: torch.nn.Module
    step: int
    checkpoint: Path
    config: dict
    vocab: object  # pipeline.vocab.Vocab


def run_dir_of(run_id: str, tracking_uri: str) -> Path:
    """An MLflow run id -> the run dir training logged as its ``run_dir`` param."""
    from mlflow.tracking import MlflowClient  # seconds to import: only for --run-id

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"MLflow run {run_id} not found at {tracking_uri} ({type(e).__name__}); "
                        "pass --tracking-uri, or use --run-dir") from None
    rd = run.data.params.get("run_dir")
    if not rd:
        raise UserError(f"MLflow run {run_id} has no run_dir param: it was not logged by `t2v train`")
    return Path(rd)


def load_generator(run_dir, checkpoint=None, device="cpu") -> Loaded:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} not found")
    state, path = checkpoints.resolve(run_dir, checkpoint)
    cfg = state["config"]
    vocab = Vocab(cfg["vocab"])
    G = build_generator(cfg, vocab.cond_dim, vocab.parts)
    checkpoints.load_weights(G, state["G_ema"], path)
    return Loaded(G.to(device).eval(), int(state["step"]), path, cfg, vocab)


def conditions(vocab, texts) -> torch.Tensor:
    """Prompts -> (P, C) float conditions through the vocab's one prompt -> condition path."""
    return torch.from_numpy(vocab.conditions(texts)).float()


def write_h5(clips: np.ndarray, texts, out: Path) -> Path:
    """Raw clips for anyone's own classifier: ``videos`` uint8 (P, n, T, H, W, 3) and
    ``prompts`` (P,) strings in --text order."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("videos", data=clips, dtype=np.uint8)
        f.create_dataset("prompts", data=list(texts), dtype=h5py.string_dtype())
    return out


def sample(run_dir, texts, n: int = 4, seed: int = 0, out="samples.gif", checkpoint=None) -> dict:
    texts = list(texts)
    if not texts:
        raise UserError("give at least one --text")
    if n < 1:
        raise UserError("--n must be >= 1")
    out = Path(out)
    if out.suffix and out.suffix.lower() not in (".gif", ".mp4", ".h5"):
        raise UserError(f"--out {out}: use a .gif, .mp4 or .h5 file, or a directory")
    g = load_generator(run_dir, checkpoint)
    cond = conditions(g.vocab, texts)
    clips = to_uint8(render(g.G, cond, n, seed))  # P,n,T,H,W,3
    if out.suffix and out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name or a directory without an extension")
    if not out.suffix and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give FILE.gif, FILE.mp4, FILE.h5 or a directory")
    if out.suffix.lower() == ".h5":
        paths = [write_h5(clips, texts, out)]
    elif out.suffix:
        paths = [write(grid(clips), out)]
    else:
        paths = [write(grid(clips), out / f"samples.{ext}") for ext in ("gif", "mp4")]
    meta = {"run_dir": str(run_dir), "checkpoint": str(g.checkpoint), "step": g.step, "seed": seed, "n": n,
            "rows": texts, "files": [str(p) for p in paths]}
    side = paths[0].with_name(paths[0].stem + ".json")
    write_json(side, meta)
    return meta
