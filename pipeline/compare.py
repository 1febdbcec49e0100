"""Runs compared by what they generate: one labelled block of clips per run, side by side.

Every block shows the same prompts (the clip prompts of the first run's data) from the same
noise (one seed), so a difference between blocks is a difference between the runs. Beside
the clip goes ``summary.csv``: each run's params and its latest evaluation metrics.

A sweep point calls ``sweep_compare`` at each clip tick and when it finishes: it renders
every point of its sweep from their newest checkpoints into SWEEP_DIR/compare/ and logs that
on the sweep's parent run. ``t2v compare`` does the same for any runs a user names.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

from .checkpoints import checkpoint_paths
from .clips import SCALE, Block, labelled, to_uint8, write
from .errors import UserError
from .labels import fill
from .models import render
from .prompts import clip_prompts, prompt_conditions
from .sample import load_generator

METRICS = ("cond_acc_seen", "cond_acc_heldout", "template_acc_seen", "object_acc_seen", "frechet", "diversity",
           "loss_G", "loss_D")
MAX_WIDTH_PX = 1600  # the clip scale drops (3, 2, 1) to keep many runs side by side on a screen


def run_dirs(paths) -> list[Path]:
    """Run dirs and sweep dirs (their points) -> run dirs, in the order given, each once."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.json").is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / "config.json").is_file())
            if not found:
                raise UserError(f"{p} is neither a training run dir nor a sweep dir (no config.json in it "
                                "or in its subfolders)")
        else:
            raise UserError(f"{p} not found")
        out += [d.absolute() for d in found if d.absolute() not in out]
    if not out:
        raise UserError("give at least one run dir or sweep dir")
    return out


def point_clips(run_dir: Path, prompts, samples: int, seed: int, device="cpu", live=None):
    """One run's clips for `prompts` -> (uint8 R,C,T,H,W,3, step).

    The only place that turns a run into clips here: the run's generator (its newest
    checkpoint, or `live` = (G_ema, step) of a running point), the run's own vocab for
    the prompts, and training's clip renderer with one seed for every run.
    """
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    if live is None:
        g = load_generator(run_dir, device=device)
        G, step = g.G, g.step
    else:
        G, step = live
    cond = _conditions(str(cfg["vocab"]), tuple(prompts))
    return to_uint8(render(G, cond, samples, seed, device)), step


@functools.lru_cache(maxsize=8)
def _conditions(vocab_dir: str, prompts: tuple):
    """Prompt conditions per vocab: a sweep's points share one, and loading it (a pretrained
    fastText model, perhaps) once per point and tick would cost more than the rendering."""
    return prompt_conditions(Path(vocab_dir), prompts)


def _label(cfg: dict, varying: list[str], step: int, name: str) -> str:
    """A block's title: the settings that differ between the compared runs, and the step."""
    keys = ", ".join(f"{k}={cfg.get(k)}" for k in varying) or name
    return f"{keys} · step {step}"


def _latest_metrics(run_dir: Path, cfg: dict) -> dict:
    """The run's newest values of METRICS from MLflow, else from its eval.json; {} if neither answers."""
    out: dict = {}
    eval_json = run_dir / "eval.json"
    if eval_json.exists():
        r = json.loads(eval_json.read_text())
        out = {k: r[k] for k in METRICS if r.get(k) is not None}
    id_file = run_dir / "mlflow_run_id"
    if id_file.exists() and cfg.get("tracking_uri"):
        try:
            from mlflow.tracking import MlflowClient

            from .tracking_server import resolve

            client = MlflowClient(tracking_uri=resolve(cfg["tracking_uri"], cfg.get("tracking_server")))
            got = client.get_run(id_file.read_text().strip()).data.metrics
            out.update({k: got[k] for k in METRICS if k in got})
        except Exception as e:  # noqa: BLE001  a table without metrics beats no table
            print(f"warning: no MLflow metrics for {run_dir.name} ({type(e).__name__})", file=sys.stderr)
    return out


def _flat(cfg: dict) -> dict:
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in cfg.items()}


def compare(runs, out: Path, samples: int = 4, seed: int = 0, device="cpu", live: dict | None = None,
            step: int | None = None) -> dict:
    """Render `runs` side by side and write the comparison; returns what was written.

    `out` is a .gif or .mp4 file (the table goes beside it as .csv), or a directory that gets
    step_NNNNNN.gif, step_NNNNNN.mp4 and summary.csv (NNNNNN: `step`, else the newest step shown).
    Runs without a readable checkpoint yet are left out of the picture (and listed in the table).
    `live` maps a run dir to (G_ema, step) to render instead of its newest checkpoint.
    """
    out = Path(out)
    if out.suffix and out.suffix.lower() not in (".gif", ".mp4"):
        raise UserError(f"--out {out}: use a .gif or .mp4 file, or a directory")
    runs = [Path(r).absolute() for r in runs]
    cfgs = {r: json.loads((r / "config.json").read_text()) for r in runs}
    first = cfgs[runs[0]]
    prompts = clip_prompts(Path(first["data"]))
    varying = [k for k in first if k not in ("run_dir", "parent_run_id", "tracking_server")
               and len({json.dumps(cfgs[r].get(k)) for r in runs}) > 1]
    blocks, steps, missing = [], {}, []
    for r in runs:
        try:
            videos, steps[r] = point_clips(r, prompts, samples, seed, device, (live or {}).get(r))
        except UserError as e:  # no checkpoint yet
            missing.append(f"{r.name}: {e}")
            continue
        blocks.append(Block(videos, _label(cfgs[r], varying, steps[r], r.name)))
    if not blocks:
        raise UserError("no run to compare has a checkpoint yet: " + "; ".join(missing))
    step = max(steps.values()) if step is None else step
    _, c, _, _, w, _ = blocks[0].videos.shape
    scale = max(1, min(SCALE, MAX_WIDTH_PX // (len(blocks) * c * w)))
    rows = [fill(t, [o]) for t, o, _ in prompts]
    frames = labelled(blocks, rows, [h for *_, h in prompts], f"step {step}", scale)
    if out.suffix:
        out.parent.mkdir(parents=True, exist_ok=True)
        files, table = [write(frames, out, scale=1)], out.with_suffix(".csv")
    else:
        out.mkdir(parents=True, exist_ok=True)
        files = [write(frames, out / f"step_{step:06d}.{e}", scale=1) for e in ("gif", "mp4")]
        table = out / "summary.csv"
    summary(runs, cfgs, steps, varying, table)
    return {"files": [str(f) for f in files], "summary": str(table), "runs": [str(r) for r in runs],
            "steps": {str(r): s for r, s in steps.items()}, "missing": missing, "varying": varying}


def summary(runs, cfgs: dict, steps: dict, varying: list[str], path: Path) -> Path:
    """summary.csv: one row per run; the differing settings first, then metrics, then every other param."""
    rows = []
    for r in runs:
        cfg = _flat(cfgs[r])
        mlflow_id = (r / "mlflow_run_id").read_text().strip() if (r / "mlflow_run_id").exists() else ""
        rows.append({"run": r.name, "step": steps.get(r, ""), "mlflow_run_id": mlflow_id,
                     **{k: cfg.get(k) for k in varying}, **_latest_metrics(r, cfgs[r]), **cfg})
    cols = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


def sweep_points(run_dir: Path, sweep: str) -> list[Path]:
    """The points of sweep `sweep`: the run dirs beside `run_dir` whose config names that sweep."""
    out = []
    for d in sorted(Path(run_dir).parent.iterdir()):
        try:
            if json.loads((d / "config.json").read_text()).get("sweep") == sweep:
                out.append(d.absolute())
        except (OSError, ValueError):
            continue
    return out


def sweep_compare(run_dir: Path, sweep: str, step: int, samples: int, seed: int, device, live=None,
                  tries: int = 3) -> dict:
    """SWEEP_DIR/compare/step_NNNNNN.gif/.mp4 + summary.csv from every point's newest checkpoint.

    Points finish at about the same time and each writes this at its end; one that rendered
    before another's final checkpoint would leave an older picture behind. So after writing,
    a point looks again and renders once more while some point has moved on meanwhile.
    """
    me = Path(run_dir).absolute()
    for _ in range(tries):
        points = sweep_points(run_dir, sweep)
        before = {p: [c.name for c in checkpoint_paths(p)][:1] for p in points if p != me}
        r = compare(points, me.parent / "compare", samples, seed, device, live={me: live} if live else None,
                    step=step)
        after = {p: [c.name for c in checkpoint_paths(p)][:1] for p in sweep_points(run_dir, sweep) if p != me}
        if after == before:
            break
    return r
