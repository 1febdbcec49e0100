"""Training stage: the conditional video GAN, one code path from 1 CPU process to N nodes.

``check(cfg)`` validates data, vocab and run dir before any work; ``run(cfg)``
trains. Every rank runs the same loop; rank 0 alone writes checkpoints and
talks to MLflow. A checkpoint holds models, optimizers, EMA, the step, every
rank's RNG states and the data position, so resuming from it is bit-exact:
a run stopped at N and resumed to 2N equals a straight run to 2N.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from . import dist, rundir
from .augment import augment, parse
from .checkpoints import FORMAT, checkpoint_paths, load_weights, newest_checkpoint, save_checkpoint
from .clips import Block, labelled, to_uint8, write_both
from .compare import sweep_compare
from .config import override, plain, set_flags, to_dict
from .data import ShardDataset
from .errors import UserError
from .evaluate import EvalConfig, evaluate_generator, write_heatmap
from .files import atomic_write, write_json
from .labels import fill
from .models import Generator, ImageD, VideoD, build_generator, has_word_parts, render, up_blocks
from .prompts import clip_prompts, prompt_conditions
from .tracking import Tracker, default_uri
from .vocab import Vocab

# Keys that may change when a run is resumed; any other difference is a different experiment.
RUN_CONTROL = {"data", "vocab", "run_dir", "max_steps", "checkpoint_every", "keep_checkpoints", "tick_every",
               "clip_every", "clip_samples", "tracking_uri", "experiment", "workers", "device", "preset",
               "sweep", "parent_run_id", "eval_every", "eval_data", "eval_samples", "max_artifact_mb",
               "eval_cache", "tracking_server"}


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    vocab: Path
    run_dir: Path
    preset: str = "default"
    max_steps: int = 1000
    # Optimisation: the original's hyperparameters.
    batch: int = 128  # global, split over ranks
    lr_g: float = 5e-5
    lr_d: float = 2e-4
    beta1: float = 0.3
    beta2: float = 0.999
    d_steps: int = 2  # D steps per G step
    gp_weight: float = 100.0  # zero-centred GP on interpolates (arXiv 1902.03984)
    gp_every: int = 1  # >1: lazy GP (StyleGAN2), every N-th D step with weight x N
    loss: Literal["bce", "hinge"] = "bce"
    # The weight of D's two negative terms (a real clip with a wrong caption, a fake) against
    # its one positive (the real clip with its own caption). 1: the original, negatives weigh
    # twice the positive; 0.5: GAN-CLS's matching-aware D (Reed et al. 2016, arXiv 1605.05396,
    # Algorithm 1), the two halves weigh the same.
    d_neg_weight: float = 1.0
    # >0: each D also ranks a clip's own caption above the others it could have had (the batch's
    # captions and their hard negatives), a softmax over its projection scores weighted this
    # much, and G's step asks the same of its fakes (XMC-GAN's contrastive text loss, Zhang et
    # al. 2021, arXiv 2101.04702). The hinge's one wrong caption per clip teaches D which look
    # goes with which word slowly; a softmax compares every candidate at once.
    match_weight: float = 0.0
    # The mismatch term's text for a real clip: "roll" = another clip's caption (the original);
    # "hard" = the same caption with only the template or only the object swapped, so D must
    # check each part (needs a `parts` vocab for the split, else it falls back to roll).
    mismatch: Literal["roll", "hard"] = "roll"
    # The captions G draws for: "data" = the batch's own; "shuffle" = each clip's object words
    # with another clip's template words, so G also makes the pairs no training clip shows
    # (both D's projections are sums over caption parts, so they can judge such a pair).
    # "shuffle_g": only G's own step draws shuffled captions; D's fakes keep the batch's. With
    # "shuffle" D sees a held-out pair on fakes only, so it can learn "that pair is fake",
    # and G is pushed away from drawing it at all (docs/quality.md, session 9).
    # "recompose_g": as shuffle_g, and each caption's modifier words (the colour of "red plank")
    # may come from another caption's, where the batch shows both modifiers with one head
    # word ("red square", "blue square"): G is also asked for colour + shape pairs no clip shows.
    fake_cond: Literal["data", "shuffle", "shuffle_g", "recompose_g"] = "data"
    # The words the video D judges a clip against: "all" (the original), or "motion": the
    # template words only (needs a `parts` vocab), so that each D judges a part of the caption
    # it has seen in every combination: the image D the object in each frame, the video D the
    # motion. A held-out pair is then no new input for either D.
    d_vid_cond: Literal["all", "motion"] = "all"
    # Which part the video D's hard negatives swap: "any" (template or an object block), or
    # "template" only. An object swapped on a real clip can make a held-out pair's caption
    # ("digit four" on a digit seven moving up), which D then only ever sees as a negative.
    # With d_vid_cond=motion it is always the template.
    vid_mismatch: Literal["any", "template"] = "any"
    # >1: the video D sees each frame as NxN-pixel averages (models.VideoD): the motion and the
    # colours, not a digit's glyph, which is the image D's to judge.
    d_vid_view: int = 1
    # >1: the video D's body runs on the clip NxN average-pooled (DVD-GAN's temporal D sees it
    # 2x2-pooled, arXiv 1907.06571): motion at low resolution, cheaper; detail is the image D's.
    d_vid_pool: int = 1
    augment: str = ""  # DiffAugment policy for D's inputs, e.g. "color,translation,cutout"
    ema_beta: float = 0.999
    # >0: the EMA's half-life is at most this fraction of the steps so far (StyleGAN2-ADA's
    # ema_rampup), so early weights fade as training goes on; ema_beta stays the upper bound.
    ema_rampup: float = 0.0
    # Model.
    frames: int = 16
    size: int = 32
    z_dim: int = 64
    gru_dim: int = 256
    g_ch: int = 32
    d_ch: int = 32
    g_conv: Literal["3d", "2+1d"] = "3d"  # the generator's up-block convolutions (2+1d: space, then time)
    g_frame_blocks: int = 0  # the last N up-blocks (and G's output conv) draw each frame on its own (models.Generator)
    # >=0: the object's modifier words (its colour) reach only G's last N up-blocks and output
    # BatchNorm; the blocks before lay out the shape from the head word alone (models.Generator;
    # needs a `parts` vocab). -1: every block sees every word (the original; every preset).
    g_mod_blocks: int = -1
    # True: the object's head word (its shape) also reaches G's GRU, which lays out where the
    # object is; its colour words do not (models.Generator; needs a `parts` vocab).
    g_gru_head: bool = False
    # True: G paints the object as a layer: its mask and shade from the head word, its colour
    # from the modifier words alone, so no colour can change an outline (models.Generator).
    # Only with a `parts` vocab, which splits those words; with another, G draws as before.
    g_layered: bool = False
    img_frames: int = 4  # frames the image discriminator scores per clip
    # "factor": the image D judges the object's head word (shape) on colour-scrambled frames and
    # its modifiers (colour) on a bag of pixel colours, each part on a view of its own attribute
    # only (models.ImageD; needs a `parts` vocab). "joint": both on one view (the original).
    d_img_views: Literal["joint", "factor"] = "joint"
    d_pool_first: bool = False  # both Ds' first block pools between its convs (cheaper; models.DBlock)
    # Speed.
    amp: bool = False  # bf16 autocast where the hardware has bf16 (CUDA, AMX CPUs); fp32 elsewhere
    channels_last: bool = False
    compile: bool = False  # torch.compile of G (D needs double backward, which compile lacks)
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    # Upkeep.
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    tick_every: int = 10
    clip_every: int = 0  # 0: clips only at the end
    clip_samples: int = 4
    max_artifact_mb: float = 512.0  # bigger checkpoints/exports: path + sha256 tags, not an upload
    eval_every: int = 0  # 0: never during training; else `t2v evaluate` metrics every N steps, on rank 0
    eval_data: tuple[Path, ...] = ()  # extra frames outputs for the evaluator (default: just `data`)
    eval_samples: int = 4
    eval_cache: str = ""  # evaluator cache dir (default: <data>/evaluators)
    tracking_uri: str = ""  # the store
    tracking_server: str = ""  # a chain's server.json (pipeline/tracking_server.py): log through it when live
    experiment: str = "text2video"
    sweep: str = ""  # sweep name: its points share a tag and an MLflow parent run
    parent_run_id: str = ""


def _debug_cpu() -> dict:
    # Tuned on the toy world for a few minutes of 2 CPU cores; each choice measured with
    # `t2v evaluate` (numbers and commands in docs/quality.md). Batch 8 with (2+1)D G convs:
    # 1.75x the steps per second of batch 16 with 3D convs, and as much learned per clip.
    # Hard negatives: D must check direction, shape and colour each. Hinge, one D step, GP 10
    # every 4th D step, betas (0, 0.99); channels_last: 1.14x (docs/benchmarks.md).
    # d_pool_first: 1.2x the steps per second at the same accuracy (docs/quality.md, session 6).
    # fake_cond=shuffle: G also draws pairs no clip shows (held-out cells, docs/quality.md, session 7);
    # shuffle_g: only G's step does, so D never learns "this pair is fake" (session 9);
    # recompose_g: G is also asked for new colour + shape pairs. At the demo's 1400 steps it read
    # held-out 1.000 / 0.982 / 0.812 on toy seeds 0 / 3 / 2 (0.902 / 0.732 / - before; session 12).
    # g_ch=12: 8 missed the demo's held-out target on toy seed 1 (0.304); 12 read held-out
    # 1.000 / 0.732 / 0.866 / 0.884 / 0.902 / 0.955 on seeds 0-5 at 1400 steps (docs/quality.md, session 15).
    # amp: bf16 autocast where the CPU has it in hardware (AMX): 1.39x the steps per second on
    # 2 cores, held-out 0.884 on seed 1 at 1400 steps (0.732 in fp32; docs/quality.md, session 16).
    # d_vid_pool=2: the video D runs on the 2x2-averaged clip (DVD-GAN's temporal D): the bench
    # met every target on seeds 1 and 2 (worst held-out cell 0.625 / 0.750; seed 1 read 0.000
    # before, docs/quality.md, sessions 15 and 18).
    # lr 2e-3 for both (5e-4 before): a GPU screen of 3 toy seeds read seen / held-out 0.76 / 0.61
    # at step 1000 against 0.60 / 0.46, and the bench met every target on seeds 1 and 4 (session 22).
    # g_frame_blocks=2: G's 16 and 32 px blocks draw each frame on its own; full-resolution time
    # convs smeared moving objects along their path (a plank moving up drawn tall). At the demo's
    # length on toy seeds 0-3 (one thread, the same data each way) it read seen 0.989 / 0.997 /
    # 0.957 / 0.959 against 0.943 / 0.875 / 0.910 / 0.753 and held-out higher on three of four,
    # at 1.2-1.3x the steps per second side by side (docs/quality.md, sessions 24 and 25).
    # g_layered: the object is a layer whose colour comes from the modifier words alone; every
    # other setting drew a held-out composition in the shape its colour had in training. At
    # the demo's length on toy seeds 0-3 (one thread, the same data each way) held-out read
    # 1.000 / 0.920 / 1.000 / 1.000 against 0.982 / 0.714 / 0.696 / 0.714 (session 26).
    # d_neg_weight=0.75: D's two negatives weigh 1.5x its one positive, not 2x (0.5 is GAN-CLS's
    # even split, which learned fastest and drew outlines that drift). On toy seeds 0-3 at the
    # demo's length (one thread, the same data each way): step 750 seen 0.913 / 0.674 / 0.728 /
    # 0.717 against 0.679 / 0.609 / 0.310 / 0.625; at the end seen 1.000 / 0.978 / 0.995 / 1.000
    # against 1.000 / 0.959 / 0.970 / 0.997, held-out 1.000 / 0.946 / 1.000 / 1.000 against
    # 1.000 / 0.920 / 1.000 / 1.000 (docs/quality.md, session 27).
    # match_weight=1: each D also ranks a clip's caption over the batch's other readings (a
    # softmax), and G asks the same of its fakes. With G frozen, D's own-caption vs wrong-caption
    # gap reached about 1 in 150 steps, where the hinge alone stayed near 0.1 after 200; toy seeds
    # 1 / 2 read seen / held-out 0.56 / 0.38 and 0.62 / 0.38 at step 400, against 0.02 / 0.00 and
    # 0.01 / 0.00 without it. At 1000 steps seeds 0-3 read seen 0.948 / 0.851 / 0.894 / 0.832 and
    # held-out 1.000 / 0.661 / 0.848 / 0.714, so the demo trains 1000 (docs/quality.md, session 28).
    return dict(batch=8, g_ch=12, d_ch=8, z_dim=16, gru_dim=64, img_frames=2, ema_beta=0.99, max_steps=300,
                checkpoint_every=50, tick_every=10, workers=0, lr_g=2e-3, lr_d=2e-3, beta1=0.0, beta2=0.99,
                d_steps=1, loss="hinge", gp_weight=10.0, gp_every=4, channels_last=True, g_conv="2+1d",
                mismatch="hard", d_pool_first=True, fake_cond="recompose_g", amp=True, d_vid_pool=2,
                g_frame_blocks=2, g_layered=True, d_neg_weight=0.75, match_weight=1.0)


def _paper() -> dict:
    return dict(batch=128, g_ch=64, d_ch=64, z_dim=128, gru_dim=512, img_frames=4, max_steps=100_000,
                checkpoint_every=1000, tick_every=50, clip_every=2000)


PRESETS = {"default": dict, "debug_cpu": _debug_cpu, "paper": _paper}


def sweep_points(base: TrainConfig, sweeps: list[str]) -> list[TrainConfig]:
    """--sweep key=v1,v2 ... -> one config per point of the product, each in its own run dir."""
    axes = []
    for sw in sweeps:
        key, sep, values = sw.partition("=")
        if not sep or not values:
            raise UserError(f"--sweep {sw!r}: expected key=v1,v2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    points = []
    for combo in itertools.product(*axes):
        name = "_".join(c.replace("=", "-") for c in combo)
        cfg = override(base, list(combo))
        points.append(replace(cfg, run_dir=Path(base.run_dir) / name))
    return points


def build_config(data, vocab, run_dir, preset: str = "default", overrides=()) -> TrainConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = TrainConfig(data=Path(data), vocab=Path(vocab), run_dir=Path(run_dir), preset=preset,
                      **PRESETS[preset]())
    cfg = override(cfg, list(overrides))
    check_values(cfg)
    return cfg


# ----------------------------------------------------------------------------- data


class TrainData(torch.utils.data.Dataset):
    """Frames shards joined with the vocab's per-sample condition vectors by video id."""

    def __init__(self, data: Path, vocab: Path):
        self.clips = ShardDataset(data)
        with h5py.File(Path(vocab) / "samples.h5", "r") as f:
            ids = [i.decode() for i in f["ids"][:]]
            cond = f["condition"][:]
        pos = {i: k for k, i in enumerate(ids)}
        missing = [i for i in self.clips.rows["id"] if i not in pos]
        if missing:
            raise UserError(f"{len(missing)} clip(s) in {data} have no condition in {vocab} (e.g. id "
                            f"{missing[0]}); build the vocab from the same labels")
        self.cond = torch.from_numpy(cond[[pos[i] for i in self.clips.rows["id"]]])  # N,D

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        return self.clips[i]["video"], self.cond[i]


class RankBatches:
    """Endless, deterministic batches of indices for one rank, resumable at any position.

    Epoch e shuffles all samples with seed (seed, e); rank r takes every world-th
    index, so ranks see disjoint slices. ``start`` is the number of batches this
    rank has already consumed.
    """

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int, start: int = 0):
        self.n, self.batch, self.rank, self.world, self.seed, self.start = n, batch, rank, world, seed, start
        self.per_epoch = (n // world) // batch
        if self.per_epoch == 0:
            raise UserError(f"{n} clips are too few for a batch of {batch} on each of {world} rank(s)")

    def __iter__(self):
        pos = self.start
        while True:
            epoch, k = divmod(pos, self.per_epoch)
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            mine = perm[: (self.n // self.world) * self.world][self.rank::self.world]
            yield mine[k * self.batch:(k + 1) * self.batch].tolist()
            pos += 1


def to_model_input(video_u8: torch.Tensor, device) -> torch.Tensor:
    """uint8 (B,T,H,W,3) -> float (B,3,T,H,W) in [-1, 1]."""
    return video_u8.to(device, non_blocking=True).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


# ----------------------------------------------------------------------------- checks


def _shard_attrs(data: Path) -> dict:
    shards = sorted((Path(data) / "shards").glob("shard-*.h5"))
    if not shards:
        raise UserError(f"no shards in {data}/shards: run `t2v frames` first")
    with h5py.File(shards[0], "r") as f:
        return json.loads(f.attrs["config"])


def check_values(cfg: TrainConfig) -> None:
    """What is wrong with a config on its own, without its data: ``build_config`` runs it, so a
    bad ``--set`` costs one line before any work (``t2v demo`` makes its toy data after)."""
    for k in ("batch", "max_steps", "d_steps", "checkpoint_every", "tick_every", "keep_checkpoints", "frames",
              "z_dim", "gru_dim", "g_ch", "d_ch", "img_frames", "gp_every", "clip_samples", "eval_samples",
              "d_vid_view", "d_vid_pool"):
        if getattr(cfg, k) < 1:
            raise UserError(f"{k} must be >= 1, not {getattr(cfg, k)}")
    for k in ("lr_g", "lr_d", "d_neg_weight"):
        if not 0 < getattr(cfg, k) < float("inf"):
            raise UserError(f"{k} must be > 0, not {getattr(cfg, k)}")
    for k in ("beta1", "beta2", "ema_beta"):
        if not 0 <= getattr(cfg, k) < 1:
            raise UserError(f"{k} must be in [0, 1), not {getattr(cfg, k)}")
    for k in ("gp_weight", "workers", "clip_every", "eval_every", "max_artifact_mb", "ema_rampup", "match_weight"):
        if not 0 <= getattr(cfg, k) < float("inf"):
            raise UserError(f"{k} must be >= 0, not {getattr(cfg, k)}")
    if cfg.size not in (32, 64, 128):
        raise UserError(f"size must be 32, 64 or 128, got {cfg.size}")
    if cfg.size % cfg.d_vid_view:
        raise UserError(f"d_vid_view must divide size {cfg.size}, not {cfg.d_vid_view}")
    if cfg.size % cfg.d_vid_pool or cfg.size // cfg.d_vid_pool < 16:
        raise UserError(f"d_vid_pool must divide size {cfg.size} and leave at least 16 pixels, not {cfg.d_vid_pool}")
    n_up = up_blocks(cfg.size)
    if not 0 <= cfg.g_frame_blocks <= n_up:
        raise UserError(f"g_frame_blocks must be 0..{n_up} (G has {n_up} up-blocks at size {cfg.size}), "
                        f"not {cfg.g_frame_blocks}")
    if not -1 <= cfg.g_mod_blocks <= n_up:
        raise UserError(f"g_mod_blocks must be -1..{n_up} (G has {n_up} up-blocks at size {cfg.size}), "
                        f"not {cfg.g_mod_blocks}")


def saved_config(run_dir) -> dict:
    """A run dir's config.json. A key it lacks was added to the code since: it had its default then."""
    saved = json.loads((Path(run_dir) / "config.json").read_text())
    return {f.name: plain(f.default) for f in fields(TrainConfig) if f.default is not MISSING} | saved


def check(cfg: TrainConfig, world: int = 1) -> dict:
    """Everything that can be wrong before a job starts (and before anything is written to the
    run dir, so a refused run leaves nothing behind); returns what the plan prints."""
    check_values(cfg)
    if cfg.batch % world:
        raise UserError(f"batch {cfg.batch} does not split evenly over {world} ranks")
    if not (Path(cfg.data) / "manifest.csv").exists():
        raise UserError(f"{cfg.data} is not a finished frames output (no manifest.csv)")
    shard = _shard_attrs(cfg.data)
    if (shard["frames"], shard["size"]) != (cfg.frames, cfg.size):
        raise UserError(f"the shards in {cfg.data} hold {shard['frames']} frames of {shard['size']}px but the "
                        f"model is set to frames={cfg.frames}, size={cfg.size}; use --set frames=.. size=..")
    vocab = Vocab(cfg.vocab)
    data = TrainData(cfg.data, cfg.vocab)  # raises on ids without conditions
    if data.cond.shape[1] != vocab.cond_dim:
        raise UserError(f"{cfg.vocab}/samples.h5 conditions have dim {data.cond.shape[1]}, expected "
                        f"{vocab.cond_dim}: rebuild it with `t2v vocab`")
    # Levers that treat the object's head word (its shape) and its modifiers (its colour) apart.
    lever = ("d_img_views=factor" if cfg.d_img_views == "factor"
             else f"g_mod_blocks={cfg.g_mod_blocks}" if cfg.g_mod_blocks >= 0
             else "g_gru_head=true" if cfg.g_gru_head else None)
    if lever and not has_word_parts(vocab.parts):
        raise UserError(f"{lever} treats the object's head word and its modifiers apart: "
                        f"build {cfg.vocab} with `t2v vocab --mode parts`")
    if cfg.g_layered and cfg.g_mod_blocks >= 0 and has_word_parts(vocab.parts):
        raise UserError(f"g_mod_blocks={cfg.g_mod_blocks} does nothing with g_layered=true (the colour words reach "
                        "no up-block then); add --set g_layered=false to try it")
    if (len(data) // world) // (cfg.batch // world) == 0:
        raise UserError(f"{len(data)} clips are too few for a batch of {cfg.batch // world} on each of {world} "
                        "rank(s); lower --set batch")
    if (Path(cfg.run_dir) / "config.json").exists() and checkpoint_paths(cfg.run_dir):  # no checkpoint: no run to keep
        old, new = saved_config(cfg.run_dir), to_dict(cfg)
        keys = [k for k in new if k not in RUN_CONTROL and old.get(k) != new[k]]
        if keys:
            # A preset's default can change between versions (d_vid_pool, session 18): say how to
            # resume the saved run as it was, not only how to start another.
            diff = ", ".join(f"{k}={old.get(k)!r} (now {new[k]!r})" for k in keys)
            back = set_flags((k, old.get(k)) for k in keys)
            raise UserError(f"{cfg.run_dir} holds a run with another config: {diff}; use a new --run-dir, "
                            f"or resume it with {back}")
    augment_policy(cfg.augment)
    path, state = newest_checkpoint(cfg.run_dir)
    if state is not None:  # the generator a resume would load fits today's model (else one line, before any job)
        with torch.random.fork_rng(devices=[]):  # building it must not move the run's random streams
            load_weights(generator(cfg, vocab.cond_dim, vocab.parts), state["G_ema"], path)
    return {"clips": len(data), "cond_dim": vocab.cond_dim, "mode": vocab.info["mode"], "data": data,
            "parts": vocab.parts, "resume_from": path}


def generator(cfg: TrainConfig, cond_dim: int, parts) -> Generator:
    return build_generator(to_dict(cfg), cond_dim, parts)


# ----------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    """This rank's RNG states as plain bytes (gather_object can't carry tensors here)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    s = {"python": random.getstate(), "numpy": [kind, keys.tobytes(), pos, has_gauss, cached],
         "torch": torch.get_rng_state().numpy().tobytes()}
    if torch.cuda.is_available():
        s["cuda"] = [t.numpy().tobytes() for t in torch.cuda.get_rng_state_all()]
    return s


def _as_tensors(s: dict) -> dict:
    """Bytes -> uint8 tensors, so the checkpoint loads with torch.load(weights_only=True)."""
    u8 = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)  # noqa: E731
    out = dict(s, torch=u8(s["torch"]), numpy=[s["numpy"][0], u8(s["numpy"][1]), *s["numpy"][2:]])
    if "cuda" in s:
        out["cuda"] = [u8(b) for b in s["cuda"]]
    return out


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    kind, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((kind, keys.numpy().view(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ----------------------------------------------------------------------------- losses


def d_loss(real_logits, mismatch_logits, fake_logits, kind: str, neg_weight: float = 1.0) -> torch.Tensor:
    """D's loss: the real clip with its caption is a positive; the real clip with a wrong caption
    and the fake are the negatives, each term weighted ``neg_weight`` (``TrainConfig.d_neg_weight``)."""
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + neg_weight * (F.relu(1 + mismatch_logits).mean()
                                                               + F.relu(1 + fake_logits).mean())
    bce = F.binary_cross_entropy_with_logits
    return bce(real_logits, torch.ones_like(real_logits)) + neg_weight * (
        bce(mismatch_logits, torch.zeros_like(mismatch_logits)) + bce(fake_logits, torch.zeros_like(fake_logits)))


def g_loss(fake_logits, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def match_loss(D, phi, cond: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each clip's projection scores over the candidate captions ``cands``,
    with every candidate that reads the same to D (``D.words``) as the clip's own caption a
    positive. ``phi``: ``D.features`` of the clips whose captions are ``cond``."""
    inverse = torch.unique(D.words(cands), dim=0, return_inverse=True)[1]
    cands = cands[[int((inverse == g).nonzero()[0]) for g in range(int(inverse.max()) + 1)]]  # one per reading
    n = cond.shape[0]
    scores = torch.stack([D.score(phi, c.expand(n, -1)).reshape(n, -1) for c in cands], -1).float()  # B, k, K
    positive = ~_differs_between(D.words(cond), D.words(cands))  # B, K
    positive = positive[:, None].expand_as(scores)
    return (scores.logsumexp(-1) - scores.masked_fill(~positive, float("-inf")).logsumexp(-1)).mean()


def gradient_penalty(D, real, fake, cond) -> torch.Tensor:
    """Zero-centred GP on random interpolates between real and fake clips."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, 1, device=real.device)
    x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(D(x, cond).sum(), x, create_graph=True)
    return g.pow(2).flatten(1).sum(1).mean()


def augment_policy(policy: str) -> tuple[str, ...]:
    try:
        return parse(policy)
    except ValueError as e:
        raise UserError(f"augment: {e}") from None


def _differs(block: torch.Tensor) -> torch.Tensor:
    """(B, B): whether row i's and row j's block hold different words."""
    return _differs_between(block, block)


def _differs_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, B): whether row i of ``a`` and row j of ``b`` hold different words."""
    return (a[:, None] - b[None]).abs().amax(-1) > 1e-6


def _one_swapped(blocks: list[torch.Tensor], which: list[int]) -> torch.Tensor:
    """The condition with, in row i, block ``which[i % len(which)]`` taken from another row.

    The donor is a random row whose block differs; for an object block, a row that agrees on
    the other object blocks comes first where the batch has one, so the wrong caption is a real
    neighbour (a digit for a digit: "digit zero" for "digit seven"; "blue plank" for "red plank")
    and D must look at the glyph or the colour itself, not at what kind of object it is."""
    b, dev = len(blocks[0]), blocks[0].device
    pick = torch.tensor(which, device=dev)[torch.arange(b, device=dev) % len(which)]
    differs = [_differs(x) for x in blocks]
    out = []
    for k, x in enumerate(blocks):
        others = [d for j, d in enumerate(differs) if k > 0 and j > 0 and j != k]  # the other object blocks
        same_rest = ~torch.stack(others).any(0) if others else torch.ones_like(differs[k])
        score = torch.rand(b, b, device=dev) + differs[k].float() + (differs[k] & same_rest).float()
        out.append(torch.where((pick == k)[:, None], x[score.argmax(1)], x))
    return torch.cat(out, 1)


def mismatched(cond: torch.Tensor, kind: str, parts,
               vid_template_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Wrong text for real clips: (for the video D, for the image D).

    "hard" keeps all but one part of the caption and swaps that one for another caption's:
    the template (same object, another direction), or one word block of the object (same
    direction, another shape or another colour). The image D sees only the object words (a
    still frame can't show a direction), so it always gets an object block swapped; with
    ``vid_template_only`` the video D always gets the template swapped."""
    if kind == "roll" or not parts:
        return cond.roll(1, 0), cond.roll(1, 0)
    blocks = list(torch.split(cond, list(parts), 1))
    vid = [0] if vid_template_only else list(range(len(blocks)))
    return _one_swapped(blocks, vid), _one_swapped(blocks, list(range(1, len(blocks))))


def ema_beta(beta: float, rampup: float, step: int) -> float:
    """The EMA decay after ``step`` G steps: ``beta``, or with ``rampup`` > 0 the decay whose
    half-life is ``rampup * step`` steps, if that is shorter (a long fixed EMA still carries
    the first, untrained weights when a short run ends)."""
    if rampup <= 0:
        return beta
    return min(beta, 0.5 ** (1 / max(rampup * step, 1e-8)))


def fake_conditions(cond: torch.Tensor, kind: str, parts) -> torch.Tensor:
    """What G draws for (``TrainConfig.fake_cond``): the batch's captions, or with ``shuffle``
    or ``shuffle_g`` the template block permuted across the batch (templates and objects drawn
    independently); ``recompose_g`` also recomposes colour + shape objects (``recomposed``)."""
    if kind == "data" or not parts:
        return cond
    perm = torch.randperm(len(cond), device=cond.device)
    out = torch.cat([cond[perm, :parts[0]], cond[:, parts[0]:]], 1)
    return recomposed(out, parts) if kind == "recompose_g" and has_word_parts(parts) else out


def recomposed(cond: torch.Tensor, parts) -> torch.Tensor:
    """``cond`` with each row's modifier block (parts: template, head word, modifiers) taken
    from a random other row whose modifier is interchangeable with its own: the batch shows
    both modifiers with one head word ("red square" and "blue square" make "blue plank" a
    "red plank"). A digit card's "digit" shares no head with a colour, so it keeps its own."""
    t, h = parts[0], parts[1]
    head, mod = cond[:, t:t + h], cond[:, t + h:]
    same_h, same_m = (~_differs(head)).float(), (~_differs(mod)).float()
    ok = ((same_m @ same_h @ same_m) > 0) & _differs(mod)  # (B, B): row j's modifier fits row i
    donor = (torch.rand(ok.shape, device=cond.device) + 2 * ok.float()).argmax(1)
    has = ok[torch.arange(len(cond), device=cond.device), donor]
    return torch.cat([cond[:, :t + h], torch.where(has[:, None], mod[donor], mod)], 1)


class GAN:
    """Models, optimizers and one training step (Dmain+Dreg x d_steps, then Gmain).

    ``step(next_batch)`` is exactly what ``run`` executes; ``bench/train_step.py``
    times the same method.
    """

    def __init__(self, cfg: TrainConfig, cond_dim: int, device, cond_parts=None):
        self.cfg, self.device, self.cond_parts = cfg, device, cond_parts
        self.policy = augment_policy(cfg.augment)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.G = generator(cfg, cond_dim, cond_parts).to(device)
        self.G_ema = generator(cfg, cond_dim, cond_parts).to(device).eval()
        self.D_img = ImageD(cond_dim, cfg.d_ch, cfg.size, cfg.img_frames, cond_parts, cfg.d_pool_first,
                            cfg.d_img_views).to(device)
        self.D_vid = VideoD(cond_dim, cfg.d_ch, cfg.size, cfg.d_pool_first,
                            cond_parts if cfg.d_vid_cond == "motion" else None, cfg.d_vid_view,
                            cfg.d_vid_pool).to(device)
        # A video D that sees no object words can only be shown a wrong template.
        self.vid_template_only = self.D_vid.parts is not None or cfg.vid_mismatch == "template"
        self.G_ema.load_state_dict(self.G.state_dict())
        if cfg.channels_last:  # only 5D conv weights have a channels-last layout
            for net in (self.G, self.D_vid, self.G_ema):
                for m in net.modules():
                    if isinstance(m, torch.nn.Conv3d):
                        m.to(memory_format=torch.channels_last_3d)
        self.opt_G = torch.optim.Adam(self.G.parameters(), cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
        self.d_params = list(self.D_img.parameters()) + list(self.D_vid.parameters())
        self.opt_D = torch.optim.Adam(self.d_params, cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
        self.G_train = torch.compile(self.G) if cfg.compile else self.G
        self.bf16 = cfg.amp and dist.native_bf16(str(device))  # the MLflow tag says which ran
        self.amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)
        self.parts = {"G": self.G, "D_img": self.D_img, "D_vid": self.D_vid, "G_ema": self.G_ema,
                      "opt_G": self.opt_G, "opt_D": self.opt_D}
        self.d_count = 0  # D steps so far (lazy GP's clock); run() sets it on resume

    def state_dict(self) -> dict:
        return {k: m.state_dict() for k, m in self.parts.items()}

    def load_state_dict(self, state: dict, where) -> None:
        for k, m in self.parts.items():
            load_weights(m, state[k], where)

    def step(self, next_batch) -> dict:
        """One G step; ``next_batch()`` gives (real B,3,T,H,W in [-1,1], cond B,D)."""
        cfg, G, amp = self.cfg, self.G, self.amp
        out = dict.fromkeys(("loss_D", "gp_img", "gp_vid", "d_real", "d_fake"), 0.0)
        for i in range(cfg.d_steps):
            self.d_count += 1
            lazy = cfg.gp_every > 1 and self.d_count % cfg.gp_every != 0
            real, cond = next_batch()
            gcond = fake_conditions(cond, cfg.fake_cond, self.cond_parts)
            dcond = cond if cfg.fake_cond in ("shuffle_g", "recompose_g") else gcond  # the captions of D's fakes
            # The last D step's fakes keep their graph and are also Gmain's: one G forward per
            # step fewer (about a tenth of a CPU step), and G is judged on what D just saw.
            # With shuffle_g, Gmain draws its own (D's fakes have other captions).
            shared = i == cfg.d_steps - 1 and dcond is gcond
            with torch.set_grad_enabled(shared), amp:
                fake_g = self.G_train(dcond, G.noise(real.shape[0], self.device))
            fake = fake_g.detach()
            mism_vid, mism_img = mismatched(cond, cfg.mismatch, self.cond_parts, self.vid_template_only)
            if self.policy:
                real, fake = augment(real, self.policy), augment(fake, self.policy)
            loss = 0.0
            for D, name, mism in ((self.D_img, "gp_img", mism_img), (self.D_vid, "gp_vid", mism_vid)):
                with amp:
                    # One body pass over real and fake together; the real clip's features serve
                    # both its own caption and the mismatched one (only the projection differs).
                    phi_real, phi_fake = D.features(torch.cat([real, fake])).chunk(2)
                    real_l, mism_l, fake_l = D.score(phi_real, cond), D.score(phi_real, mism), D.score(phi_fake, dcond)
                    gp = real_l.new_zeros(()) if lazy else gradient_penalty(D, real, fake, cond)
                    match = match_loss(D, phi_real, cond, torch.cat([cond, mism])) if cfg.match_weight else 0.0
                loss = loss + d_loss(real_l.float(), mism_l.float(), fake_l.float(), cfg.loss, cfg.d_neg_weight) \
                    + cfg.gp_weight * cfg.gp_every * gp + cfg.match_weight * match
                out[name] += gp.item() / cfg.d_steps
                out["d_real"] += real_l.float().mean().item() / (2 * cfg.d_steps)
                out["d_fake"] += fake_l.float().mean().item() / (2 * cfg.d_steps)
            self.opt_D.zero_grad(set_to_none=True)
            loss.backward()
            dist.average_grads(self.d_params)
            self.opt_D.step()
            out["loss_D"] += loss.item() / cfg.d_steps
        for p in self.d_params:  # Gmain: D is only a critic here
            p.requires_grad_(False)
        with amp:
            if not shared:
                fake_g = self.G_train(gcond, G.noise(gcond.shape[0], self.device))
            fake = augment(fake_g, self.policy) if self.policy else fake_g
            # With match_weight, G's captions are also ranked against their own hard negatives.
            gm_vid, gm_img = (mismatched(gcond, cfg.mismatch, self.cond_parts, self.vid_template_only)
                              if cfg.match_weight else (None, None))
            lg = 0.0
            for D, gm in ((self.D_img, gm_img), (self.D_vid, gm_vid)):
                phi = D.features(fake)
                lg = lg + g_loss(D.score(phi, gcond).float(), cfg.loss)
                if cfg.match_weight:
                    lg = lg + cfg.match_weight * match_loss(D, phi, gcond, torch.cat([gcond, gm]))
        self.opt_G.zero_grad(set_to_none=True)
        lg.backward()
        dist.average_grads(G.parameters())
        self.opt_G.step()
        for p in self.d_params:
            p.requires_grad_(True)
        dist.average_buffers(G)
        with torch.no_grad():  # EMA of G for sampling
            beta = ema_beta(cfg.ema_beta, cfg.ema_rampup, self.d_count // cfg.d_steps)
            for pe, p in zip(self.G_ema.parameters(), G.parameters()):
                pe.lerp_(p, 1 - beta)
            for be, b in zip(self.G_ema.buffers(), G.buffers()):
                be.copy_(b)
        out["loss_G"] = lg.item()
        return out


# ----------------------------------------------------------------------------- prompts and clips


# ----------------------------------------------------------------------------- the loop


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Batches:
    """What ``GAN.step`` calls for its next batch: (real B,3,T,H,W in [-1, 1], cond B,C) on the
    device. Counts the batches this rank has drawn (``pos``, the checkpoint's data position)
    and the seconds spent waiting for the loader since the last tick (``wait_s``)."""

    def __init__(self, loader, device, channels_last: bool, pos: int):
        self.loader, self.device, self.channels_last, self.pos = loader, device, channels_last, pos
        self.wait_s = 0.0

    def __call__(self):
        t0 = time.perf_counter()
        video, cond = next(self.loader)
        self.wait_s += time.perf_counter() - t0
        self.pos += 1
        x = to_model_input(video, self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x, cond.to(self.device)


class StopRequests:
    """Signal handlers that only record the strongest request: 1 = preempted (checkpoint,
    requeue, the MLflow run stays RUNNING), 2 = cancelled (SIGTERM: checkpoint, KILLED).
    The loop reads ``code`` at step boundaries, where ranks agree on it."""

    def __init__(self):
        self.code = 0
        self.codes = {dist.preempt_signal(): 1, signal.SIGTERM: 2}
        self.previous = {s: signal.signal(s, self._handle) for s in self.codes}

    def _handle(self, sig, _frame) -> None:
        self.code = max(self.code, self.codes[sig])

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def _start(cfg: TrainConfig, gan: GAN, run_dir: Path, env) -> tuple[int, int]:
    """Resume from the newest readable checkpoint, or seed a new run; returns (step, data_pos).
    Read here, under the run lock, not reused from ``check``: a run that ended between the two
    may have written a newer one."""
    path, state = newest_checkpoint(run_dir)
    if state is None:
        random.seed(cfg.seed + env.rank)
        np.random.seed(cfg.seed + env.rank)
        torch.manual_seed(cfg.seed + 1000 * (env.rank + 1))
        return 0, 0
    gan.load_state_dict(state, path)
    gan.d_count = state["step"] * cfg.d_steps
    if len(state["rng"]) != env.world:
        raise UserError(f"checkpoint was written by {len(state['rng'])} rank(s); resume with the same number")
    _set_rng_state(state["rng"][env.rank])
    if env.main:
        print(f"resuming {run_dir} from step {state['step']}", file=sys.stderr)
    return state["step"], state["data_pos"]


def _loader(cfg: TrainConfig, data: TrainData, env, device, data_pos: int):
    """This rank's disjoint slice of the data, endless, starting where the checkpoint left off."""
    per_rank = cfg.batch // env.world
    if per_rank * env.world != cfg.batch:
        raise UserError(f"batch {cfg.batch} does not split evenly over {env.world} ranks")
    sampler = RankBatches(len(data), per_rank, env.rank, env.world, cfg.seed, start=data_pos)
    # Its own generator: creating the loader must not draw from the global RNG, or a
    # resumed run's random stream would drift from an uninterrupted one.
    return iter(torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=cfg.workers,
                                            pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
                                            generator=torch.Generator().manual_seed(cfg.seed)))


def _tracker(cfg: TrainConfig, run_dir: Path, env, bf16: bool) -> Tracker:
    tags = {"world_size": env.world, "bf16_autocast": bf16, "git_commit": _git_commit(), "preset": cfg.preset,
            **dist.job_tags()}
    if cfg.sweep:
        tags["t2v.sweep"] = cfg.sweep
    if cfg.parent_run_id:  # an empty parent id breaks the MLflow UI's runs table
        tags["mlflow.parentRunId"] = cfg.parent_run_id
    return Tracker(cfg.tracking_uri or default_uri(Path.cwd()), cfg.experiment, run_dir, to_dict(cfg), tags,
                   server_file=cfg.tracking_server or None)


def _save(cfg: TrainConfig, gan: GAN, run_dir: Path, step: int, data_pos: int, env) -> None:
    """Collective: every rank's RNG states go into rank 0's checkpoint."""
    rngs = [_as_tensors(r) for r in dist.gather_objects(_rng_state())]
    if env.main:
        path = save_checkpoint(run_dir, step, {
            "format": FORMAT, "step": step, "data_pos": data_pos, "config": to_dict(cfg),
            **gan.state_dict(), "rng": rngs}, cfg.keep_checkpoints)
        print(f"checkpoint {path}", file=sys.stderr)
    dist.barrier()


def _clips(cfg: TrainConfig, gan: GAN, run_dir: Path, step: int, prompts, prompt_cond, device, tracker) -> None:
    """Rank 0: the labelled clip grid of the EMA generator (GIF and MP4), which prompt each row
    shows, and for a sweep point the points side by side on the sweep's parent run."""
    videos = to_uint8(render(gan.G_ema, prompt_cond, cfg.clip_samples, cfg.seed, device))
    frames = labelled([Block(videos)], [fill(t, [o]) for t, o, _ in prompts], [h for *_, h in prompts],
                      f"step {step}")
    for p in write_both(frames, run_dir / "clips" / f"step_{step:06d}"):
        tracker.artifact(p, "clips")
    if cfg.sweep and cfg.parent_run_id:
        try:
            r = sweep_compare(run_dir, cfg.sweep, step, cfg.clip_samples, cfg.seed, device, live=(gan.G_ema, step))
            for p in (*r["files"], r["summary"]):
                tracker.artifact(Path(p), "compare", run_id=cfg.parent_run_id)
        except Exception as e:  # noqa: BLE001  a comparison is never worth a training run
            print(f"warning: sweep comparison at step {step} failed ({type(e).__name__}: {e})", file=sys.stderr)
    rows = run_dir / "clips" / "prompts.json"  # beside the clips in the UI
    write_json(rows, [{"row": i, "template": t, "object": o, "held_out": h} for i, (t, o, h) in enumerate(prompts)])
    tracker.artifact(rows, "clips")


def _evaluate(cfg: TrainConfig, gan: GAN, run_dir: Path, step: int, device, tracker) -> None:
    """Rank 0: `t2v evaluate`'s metrics for the EMA generator, as curves in MLflow, with the
    per-cell heatmap beside them and a line in eval/curve.jsonl (the learning curve)."""
    ecfg = EvalConfig(run_dir=run_dir, data=(Path(cfg.data), *map(Path, cfg.eval_data)),
                      samples=cfg.eval_samples, seed=cfg.seed, device=str(device),
                      cache=Path(cfg.eval_cache) if cfg.eval_cache else None)
    with dist.alone_on_this_machine():  # the other ranks wait for this evaluation
        r = evaluate_generator(gan.G_ema, step, to_dict(cfg), Vocab(cfg.vocab), ecfg, progress=False)
    tracker.metrics(step, {k: r[k] for k in EVAL_METRICS if r.get(k) is not None}, key="cond_acc_seen")
    tracker.artifact(write_heatmap(r, run_dir / "eval" / f"heatmap_step_{step:06d}.png"), "eval")
    with open(run_dir / "eval" / "curve.jsonl", "a") as f:  # appended: a torn last line loses one point only
        f.write(json.dumps({k: r[k] for k in ("step", *EVAL_METRICS) if k in r}) + "\n")
    print(f"step {step} eval: cond_acc_seen={r['cond_acc_seen']:.3f} heldout={r['cond_acc_heldout'] or 0:.3f} "
          f"(chance {r['chance']:.3f}) frechet={r['frechet']:.3g}", file=sys.stderr, flush=True)


def _export(cfg: TrainConfig, gan: GAN, run_dir: Path, step: int, info: dict, prompts, tracker) -> None:
    """Rank 0, once finished: the EMA generator on its own, and the newest checkpoint, as artifacts."""
    export = run_dir / "generator.pt"
    state = {"G_ema": gan.G_ema.state_dict(), "step": step, "config": to_dict(cfg), "cond_dim": info["cond_dim"],
             "cond_parts": info["parts"], "prompts": prompts}
    atomic_write(export, lambda p: torch.save(state, p))
    tracker.artifact(export, "model", cfg.max_artifact_mb)
    latest = checkpoint_paths(run_dir)
    if latest:
        tracker.artifact(latest[0], "checkpoints", cfg.max_artifact_mb)


TICK_KEYS = ("loss_G", "loss_D", "gp_img", "gp_vid", "d_real", "d_fake")


def _lock_and_write_config(cfg: TrainConfig, run_dir: Path, env):
    """Rank 0 takes the run dir's lock (one run per run dir; released when this one ends), then
    writes config.json; every rank learns whether the lock was held by another run."""
    lock = rundir.RunLock(run_dir) if env.main else None
    if held := dist.broadcast_object(lock.acquire() if lock else None):
        raise UserError(f"{run_dir} is in use by another training run ({held}); wait for it to end or stop it")
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", to_dict(cfg), sort_keys=True)
    dist.barrier()
    return lock


def run(cfg: TrainConfig) -> dict:
    # Set up: ranks, checks, the config in the run dir.
    env = dist.init(cfg.device)
    device = torch.device(env.device)
    run_dir = Path(cfg.run_dir)
    info = check(cfg, env.world)  # before anything is written: a refused run leaves nothing behind
    lock = _lock_and_write_config(cfg, run_dir, env)

    # Models, and the step to go on from.
    gan = GAN(cfg, info["cond_dim"], device, info["parts"])
    step, data_pos = _start(cfg, gan, run_dir, env)
    batches = Batches(_loader(cfg, info["data"], env, device, data_pos), device, cfg.channels_last, data_pos)

    # Tracking (rank 0 only) and stop requests. Handlers go in after dist.init, so process-group
    # set-up can't swallow them; any rank may get one, and max_rank() stops every rank at the
    # same step. Every rank knows the one MLflow run (rank 0 created or reopened it).
    prompts = clip_prompts(cfg.data)
    prompt_cond = prompt_conditions(cfg.vocab, prompts)
    tracker = _tracker(cfg, run_dir, env, gan.bf16) if env.main else None
    run_id = dist.broadcast_object(tracker.run_id if tracker else None)
    stop = StopRequests()

    # Main loop.
    tick = dict.fromkeys(TICK_KEYS, 0.0)
    tick_steps, t_tick = 0, time.perf_counter()
    status = "finished"
    try:
        while step < cfg.max_steps:
            for k, v in gan.step(batches).items():
                tick[k] += v
            tick_steps += 1
            step += 1

            # Tick: metrics, clips, evaluation, checkpoints, stop requests.
            if step % cfg.tick_every == 0 or step == cfg.max_steps:
                dt = time.perf_counter() - t_tick
                n = max(tick_steps, 1)
                metrics = {k: tick[k] / n for k in TICK_KEYS}
                metrics.update(samples_per_s=n * cfg.batch * cfg.d_steps / dt, sec_per_step=dt / n,
                               data_wait_share=batches.wait_s / dt)
                if env.main:
                    tracker.metrics(step, metrics)
                    print(f"step {step}/{cfg.max_steps} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                          file=sys.stderr, flush=True)
                tick, tick_steps = dict.fromkeys(TICK_KEYS, 0.0), 0
                batches.wait_s, t_tick = 0.0, time.perf_counter()
            if cfg.clip_every and step % cfg.clip_every == 0 and env.main:
                _clips(cfg, gan, run_dir, step, prompts, prompt_cond, device, tracker)
            if cfg.eval_every and step % cfg.eval_every == 0 and env.main:
                _evaluate(cfg, gan, run_dir, step, device, tracker)
            code = dist.max_rank(stop.code)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or code:
                _save(cfg, gan, run_dir, step, batches.pos, env)
            if code:
                status = "preempted" if code == 1 else "cancelled"
                break

        # Done: clips and exports, then every rank's weight digest (DDP consistency, checkable outside).
        if status == "finished" and env.main:
            _clips(cfg, gan, run_dir, step, prompts, prompt_cond, device, tracker)
            _export(cfg, gan, run_dir, step, info, prompts, tracker)
        digests = dist.gather_objects(param_digest(gan.G, gan.D_img, gan.D_vid))
        run_ids = dist.gather_objects(run_id)
    except KeyboardInterrupt:
        status = "cancelled"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        stop.restore()
        # Set explicitly: MLflow's atexit would call a crash FINISHED (mlflow#3932). A preempted
        # run stays RUNNING until its requeued job finishes it.
        final = {"finished": "FINISHED", "cancelled": "KILLED", "failed": "FAILED"}.get(status)
        if tracker and final:
            tracker.finish(final)
        if lock:
            lock.release()
        dist.shutdown()
    return {"status": status, "step": step, "run_dir": str(run_dir), "world": env.world,
            "rank_digests": digests, "mlflow_run_id": run_id, "rank_run_ids": run_ids}


EVAL_METRICS = ("cond_acc_seen", "cond_acc_heldout", "cond_acc_heldout_pairs", "cond_acc_heldout_objects",
                "cond_acc_unreachable", "min_cell_acc_heldout", "template_acc_seen", "object_acc_seen", "frechet",
                "diversity", "evaluator_real_acc")


def param_digest(*modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        for p in m.parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
