"""Frames stage: videos -> fixed-size uint8 clips in HDF5 shards.

``plan(cfg)`` validates the inputs and splits the selected samples into
shards; ``run_shard(cfg, k)`` is one array task; ``write_manifest`` joins
the shards' per-row statuses into ``manifest.csv``. Nothing here knows about
SLURM: ``jobs.executor`` maps ``run_shard`` over the shards.

Completeness is carried by file names alone: a shard is written to a temporary
name, fsynced and renamed, so ``shard-NNNNN.h5`` exists only when whole; the
manifest is written the same way, and only once every shard exists.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from .config import fingerprint, to_dict
from .decode import ClipError, decode, sample_indices
from .errors import UserError
from .files import atomic_path, atomic_write, stale_temps, write_json
from .labels import Sample, read_labels, select_templates

STATUSES = ("ok", "missing", "corrupt", "too_short")
SHARD_FMT = "shard-{:05d}.h5"
MANIFEST_COLUMNS = ["id", "status", "shard", "index", "label", "template", "placeholders",
                    "n_frames", "reason"]


@dataclass(frozen=True)
class FramesConfig:
    labels: Path
    videos: Path
    out: Path
    templates: tuple[str, ...] = ()
    frames: int = 16
    size: int = 32
    stride: Optional[int] = None  # None: spread `frames` evenly over the clip
    offset: int = 0
    shard_size: int = 256
    decoder: Literal["skvideo", "pyav"] = "pyav"
    resize: Literal["squash", "center-crop"] = "squash"
    compression: Literal["gzip", "lzf", "none"] = "gzip"

    def content(self) -> dict:
        """What determines the bytes in the shards; must match to reuse them."""
        d = to_dict(self)
        for k in ("labels", "videos", "out"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class Plan:
    samples: list[Sample]       # after the template filter, in labels order
    n_labels: int
    shards: list[list[Sample]]
    done: list[int]             # shard indices already complete

    @property
    def todo(self) -> list[int]:
        done = set(self.done)
        return [k for k in range(len(self.shards)) if k not in done]


def shard_path(cfg: FramesConfig, k: int) -> Path:
    return Path(cfg.out) / "shards" / SHARD_FMT.format(k)


def _check_config(cfg: FramesConfig) -> None:
    if cfg.frames < 1 or cfg.size < 8 or cfg.shard_size < 1:
        raise UserError("--frames must be >= 1, --size >= 8 and --shard-size >= 1")
    if cfg.stride is not None and (cfg.stride < 1 or cfg.offset < 0):
        raise UserError("--stride must be >= 1 and --offset >= 0")


def plan(cfg: FramesConfig, verify: bool = True) -> Plan:
    """Validate inputs and find which shards still have to be made.

    ``verify`` opens every existing shard to check its config and samples (the CLI
    does this once before submitting); array tasks skip it and trust file names.
    """
    _check_config(cfg)
    samples = read_labels(cfg.labels)
    if not Path(cfg.videos).is_dir():
        raise UserError(f"videos directory not found: {cfg.videos}")
    selected = select_templates(samples, cfg.templates)
    if not selected:
        raise UserError(f"{cfg.labels} holds no samples")
    shards = [selected[i:i + cfg.shard_size] for i in range(0, len(selected), cfg.shard_size)]
    want = cfg.content()
    done = []
    for p in sorted((Path(cfg.out) / "shards").glob("shard-*.h5")):
        if not verify:
            done.append(int(p.stem.split("-")[1]))
            continue
        try:
            k = int(p.stem.split("-")[1])
            with h5py.File(p, "r") as f:
                have = json.loads(f.attrs["config"])
                ids = [s.decode() for s in f["rows/id"][:]]
        except (OSError, KeyError, ValueError, IndexError) as e:
            raise UserError(f"{p} is unreadable ({type(e).__name__}); delete it to have it redone") from None
        diff = [f"{key}={have.get(key)!r} (this run: {want[key]!r})" for key in want if have.get(key) != want[key]]
        if diff:
            raise UserError(f"{cfg.out} holds shards made with a different config: {', '.join(diff)}; "
                            "use another --out or delete its shards/")
        if k >= len(shards) or ids != [s.id for s in shards[k]]:
            raise UserError(f"{p.name} holds other samples than this run would put there (labels, "
                            "--templates or --shard-size changed); use another --out or delete its shards/")
        done.append(k)
    return Plan(selected, len(samples), shards, done)


def _clip(cfg: FramesConfig, s: Sample) -> tuple[np.ndarray | None, str, int, str]:
    """One sample -> (frames or None, status, n_frames, reason)."""
    path = Path(cfg.videos) / f"{s.id}.webm"
    if not path.exists():  # something-something ships webm; accept other containers too
        alt = sorted(Path(cfg.videos).glob(f"{s.id}.*"))
        path = alt[0] if alt else path
    try:
        video = decode(path, cfg.size, cfg.decoder, cfg.resize)  # N,H,W,3
    except ClipError as e:
        return None, e.status, 0, e.reason
    idx = sample_indices(len(video), cfg.frames, cfg.stride, cfg.offset)
    if idx is None:
        return None, "too_short", len(video), f"{len(video)} frames, need {cfg.frames}"
    return video[idx], "ok", len(video), ""


def run_shard(cfg: FramesConfig, k: int, progress: bool = True) -> dict:
    """Array task: decode shard ``k``'s clips and write ``shard-k.h5`` atomically."""
    p = plan(cfg, verify=False)  # checked before submission; N tasks x N shard opens would add up
    final = shard_path(cfg, k)
    if k in p.done:
        return _finish(cfg, p, k)
    rows = p.shards[k]
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temps(final):
        stale.unlink(missing_ok=True)  # left by a killed task; ours gets a new name
    t, s = cfg.frames, cfg.size
    comp = {"gzip": dict(compression="gzip", compression_opts=1), "lzf": dict(compression="lzf"),
            "none": {}}[cfg.compression]
    statuses, n_frames, reasons, index = [], [], [], []
    t0 = time.time()
    with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
        videos = f.create_dataset("videos", shape=(0, t, s, s, 3), maxshape=(None, t, s, s, 3),
                                  dtype=np.uint8, chunks=(1, t, s, s, 3), **comp)
        ok_ids = []
        for sample in tqdm(rows, desc=f"shard {k}", unit="clip", disable=not progress, mininterval=2):
            clip, status, n, reason = _clip(cfg, sample)
            statuses.append(status)
            n_frames.append(n)
            reasons.append(reason)
            index.append(len(ok_ids) if clip is not None else -1)
            if clip is not None:
                videos.resize(len(ok_ids) + 1, axis=0)
                videos[len(ok_ids)] = clip  # T,H,W,3
                ok_ids.append(sample.id)
        strs = dict(dtype=h5py.string_dtype())
        f.create_dataset("ids", data=ok_ids, **strs)
        f.create_dataset("rows/id", data=[r.id for r in rows], **strs)
        f.create_dataset("rows/status", data=statuses, **strs)
        f.create_dataset("rows/reason", data=reasons, **strs)
        f.create_dataset("rows/n_frames", data=np.asarray(n_frames, np.int64))
        f.create_dataset("rows/index", data=np.asarray(index, np.int64))
        f.attrs["config"] = json.dumps(cfg.content(), sort_keys=True)
        f.attrs["config_hash"] = fingerprint(cfg.content())
        f.attrs["shard"] = k
        f.attrs.update({key: json.dumps(v) for key, v in cfg.content().items()})
        f.attrs["seconds"] = time.time() - t0
    p.done.append(k)
    return _finish(cfg, p, k)


def ensure_manifest(cfg: FramesConfig, p: Plan) -> bool:
    """Write manifest.csv once every shard exists (if it isn't there yet, or its captions are not
    the labels file's any more); True if it exists."""
    manifest = Path(cfg.out) / "manifest.csv"
    if all(shard_path(cfg, j).exists() for j in range(len(p.shards))) and not _manifest_current(manifest, p):
        write_manifest(cfg, p)
    return manifest.exists()


def _manifest_current(manifest: Path, p: Plan) -> bool:
    """The manifest exists and its captions are the labels file's (the shards hold only pixels, so
    a changed caption means a new manifest, not new shards)."""
    import pandas as pd

    if not manifest.exists():
        return False
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        have = list(zip(df["id"], df["label"], df["template"], df["placeholders"]))
    except (ValueError, KeyError, pd.errors.ParserError):
        return False
    return have == [(s.id, s.label, s.template, json.dumps(list(s.placeholders))) for s in p.samples]


def _finish(cfg: FramesConfig, p: Plan, k: int) -> dict:
    # Whichever task sees every shard present writes the manifest, so an array
    # submitted with --no-wait still ends with one.
    ensure_manifest(cfg, p)
    return {"shard": k, "path": str(shard_path(cfg, k))}


def read_rows(cfg: FramesConfig, p: Plan):
    parts = []
    for k, rows in enumerate(p.shards):
        with h5py.File(shard_path(cfg, k), "r") as f:
            g = f["rows"]
            parts.append(pd.DataFrame({
                "id": [s.decode() for s in g["id"][:]],
                "status": [s.decode() for s in g["status"][:]],
                "shard": SHARD_FMT.format(k),
                "index": g["index"][:],
                "label": [r.label for r in rows],
                "template": [r.template for r in rows],
                "placeholders": [json.dumps(list(r.placeholders)) for r in rows],
                "n_frames": g["n_frames"][:],
                "reason": [s.decode() for s in g["reason"][:]],
            }))
    return pd.concat(parts, ignore_index=True)[MANIFEST_COLUMNS]


def write_manifest(cfg: FramesConfig, p: Plan) -> Path:
    out = Path(cfg.out) / "manifest.csv"
    df = read_rows(cfg, p)
    return atomic_write(out, lambda p: df.to_csv(p, index=False))


def summary(manifest: Path) -> dict[str, int]:
    counts = pd.read_csv(manifest, dtype={"id": str})["status"].value_counts()
    return {s: int(counts.get(s, 0)) for s in STATUSES}


def prepare(cfg: FramesConfig, p: Optional[Plan] = None) -> Plan:
    """Run-level set-up before any task: make dirs, drop a stale manifest, save the config."""
    p = p or plan(cfg)
    out = Path(cfg.out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    if p.todo and manifest.exists():
        manifest.unlink()  # it described shards that are gone
    elif not p.todo:
        ensure_manifest(cfg, p)  # a caption changed in the labels: the manifest follows
    cfg_file = out / "frames_config.json"
    if not cfg_file.exists():
        write_json(cfg_file, to_dict(cfg), sort_keys=True)
    return p
