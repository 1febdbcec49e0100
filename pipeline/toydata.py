"""A small, deterministic stand-in for something-something-v2.

``make_toy(out, videos=N, seed=S)`` writes the real dataset's on-disk format:
``labels/{train,validation}.json`` and ``videos/<id>.webm`` (VP9, 12 fps,
96-240 px high, 2-5 s). Each clip shows one object (a coloured square, plank
or pillar, or a digit card) pushed or moved by a "hand" in the direction its
caption says. Some object/direction pairs, two colour + shape compositions and
one digit never appear in train: they are the held-out prompts that evaluation
uses, listed in ``toy_meta.json``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import UserError
from .files import write_json
from .labels import fill

FPS = 12
TEMPLATES = {
    "ltr": "Pushing [something] from left to right",
    "rtl": "Pushing [something] from right to left",
    "up": "Moving [something] up",
    "down": "Moving [something] down",
    "show": "Showing [something] to the camera",  # a distractor for --templates
}
DIRECTIONS = ("ltr", "rtl", "up", "down")
COLOURS = {"red": (225, 30, 30), "green": (30, 175, 50), "blue": (35, 70, 230), "yellow": (250, 215, 20)}
SKIN = (235, 180, 150)  # the pushing "hand"
SHAPE_EXTENT = {"square": (0.85, 0.85), "plank": (0.95, 0.38), "pillar": (0.38, 0.95)}  # half width, half height
SHAPES = tuple(SHAPE_EXTENT)
DIGITS = ("zero", "one", "four", "seven")  # GLYPHS below
OBJECTS = [f"{c} {s}" for c in COLOURS for s in SHAPES] + [f"digit {d}" for d in DIGITS]
SHOW_SHARE = 0.1
VAL_SHARE = 0.25  # of all clips; two thirds of them show held-out cells, so the evaluator learns them
N_HELDOUT_PAIRS = 6
N_HELDOUT_OBJECTS = 2


def heldout_sets(seed: int) -> dict:
    """The held-out cells of toy seed ``seed``; a different draw for every seed.

    - ``heldout_pairs``: a seen object with a direction it never has in train;
    - ``heldout_objects``: a colour + shape composition never in train, whose colour and
      shape are each seen with other partners (so its name says what it looks like);
    - ``unreachable``: a digit never in train: its glyph can't be known from its name.
      A control, never counted in held-out accuracy.
    """
    rng = np.random.default_rng([seed, 7919])
    unreachable = [f"digit {DIGITS[rng.integers(len(DIGITS))]}"]
    # Held-out compositions in distinct rows and columns of the colour x shape grid, so every
    # colour and every shape keeps partners in train.
    colours = rng.permutation(list(COLOURS))[:N_HELDOUT_OBJECTS]
    shapes = rng.permutation(SHAPES)[:N_HELDOUT_OBJECTS]
    objects = [f"{c} {s}" for c, s in zip(colours.tolist(), shapes.tolist())]
    seen = [o for o in OBJECTS if o not in objects and o not in unreachable]
    picks = rng.permutation(len(seen))[:N_HELDOUT_PAIRS]  # distinct objects, one held-out direction each
    pairs = [(seen[i], DIRECTIONS[rng.integers(len(DIRECTIONS))]) for i in sorted(picks)]
    return {"heldout_pairs": pairs, "heldout_objects": objects, "unreachable": unreachable}


# Digits are bold block glyphs filling a white card. Each puts its ink somewhere else (a ring, a
# centre stroke, a top bar and a diagonal, a cross bar and a right stem), so they differ in
# outline at 32 px, not only in thin strokes. The handwritten 8x8 exemplars used before were
# all drawn as one generic card by the generator at step 1200 (docs/quality.md).
GLYPHS = {
    "zero": ("#####", "#...#", "#...#", "#...#", "#####"),
    "one": ("..#..", ".##..", "..#..", "..#..", ".###."),
    "four": ("#..#.", "#..#.", "#####", "...#.", "...#."),
    "seven": ("#####", "....#", "...#.", "..#..", "..#.."),
}


def _glyph(word: str) -> np.ndarray:
    """(5,5) ink in {0, 1}. The glyph fills its card: with a one-cell margin (before session 8)
    a stroke was under 2 px at 32 px, and digits were the cells the generator drew last."""
    return np.array([[c == "#" for c in row] for row in GLYPHS[word]], float)


def _mask(obj: str, s: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Alpha (s,w) and colour image (s,w,3) of an object ``s`` px high (``w`` wide, default s)."""
    w = width or s
    yy, xx = np.mgrid[0:s, 0:w].astype(float)
    yy, xx = (yy + 0.5) / s * 2 - 1, (xx + 0.5) / w * 2 - 1  # [-1, 1]
    if obj.startswith("digit "):
        ink = _glyph(obj.split()[1])[(np.arange(s) * 5) // s][:, (np.arange(w) * 5) // w]
        rgb = np.empty((s, w, 3))
        rgb[:] = (250, 250, 245)  # a white card ...
        rgb -= ink[..., None] * np.array([240, 235, 200])  # ... with dark-blue ink
        return np.ones((s, w)), rgb
    colour, shape = obj.split()
    if shape == "circle":  # the hand
        alpha = xx**2 + yy**2 < 0.8
    else:
        # The shapes differ in outline, not in detail: a generator's first, blurry answer already
        # carries a blob's width and height, while corners (square vs circle) and a triangle's
        # point are learnt last (docs/quality.md: triangles were still drawn as discs at step 1600).
        half_w, half_h = SHAPE_EXTENT[shape]
        alpha = (np.abs(xx) < half_w) & (np.abs(yy) < half_h)
    rgb = np.empty((s, w, 3))
    rgb[:] = COLOURS.get(colour, SKIN)
    return alpha.astype(float), rgb


def _paste(frame: np.ndarray, alpha: np.ndarray, rgb: np.ndarray, cx: float, cy: float) -> None:
    h, w = frame.shape[:2]
    sh, sw = alpha.shape
    x0, y0 = int(round(cx - sw / 2)), int(round(cy - sh / 2))
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + sw, w), min(y0 + sh, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    a = alpha[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0, None]
    region = frame[fy0:fy1, fx0:fx1]
    region[:] = a * rgb[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] + (1 - a) * region


def render(obj: str, action: str, rng: np.random.Generator) -> np.ndarray:
    """Frames (T,H,W,3) uint8 of ``obj`` doing ``action`` (a TEMPLATES key).

    Built to be recognisable after ``t2v frames`` squashes it to 32x32: a plain table top,
    an object about 40% of the frame high (drawn wider by the frame's aspect, so it is
    square after the squash), and a motion across most of the frame.
    """
    h = int(rng.integers(48, 81)) * 2  # 96-160 px
    aspect = rng.uniform(1.25, 1.6)
    w = int(round(h * aspect / 2)) * 2
    t = int(rng.integers(2 * FPS, 4 * FPS + 1))
    base = rng.uniform(120, 165) + rng.uniform(-12, 12, size=3)  # a grey table top, slightly tinted
    grad = np.linspace(-8, 8, h)[:, None, None] * rng.choice([-1, 1])
    grain = rng.normal(0, 2, size=(h, w, 1))
    bg = np.clip(base + grad + grain, 0, 255)
    s = int(h * rng.uniform(0.40, 0.46))
    sw = int(round(s * aspect))
    alpha, rgb = _mask(obj, s, sw)
    hand_a, hand_rgb = _mask("hand circle", int(s * 0.6), int(s * 0.6 * aspect))
    p = np.linspace(0, 1, t)
    p = p * p * (3 - 2 * p)  # eased
    lo, hi = rng.uniform(0.17, 0.24), rng.uniform(0.76, 0.83)
    cross = rng.uniform(0.42, 0.58)
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        f = bg.copy()
        size = 1.0
        if action in ("ltr", "rtl"):
            u = lo + (hi - lo) * (p[i] if action == "ltr" else 1 - p[i])
            cx, cy = u * w, cross * h
            hx, hy = cx + (-1 if action == "ltr" else 1) * sw * 0.7, cy
        elif action in ("up", "down"):
            u = lo + (hi - lo) * (1 - p[i] if action == "up" else p[i])
            cx, cy = cross * w, u * h
            hx, hy = cx, cy + (1 if action == "up" else -1) * s * 0.7
        else:  # show: the object comes closer to the camera
            size = 1 + 0.6 * p[i]
            cx, cy = w / 2, h / 2
            hx, hy = cx, cy + s * size * 0.6
        a, c = (alpha, rgb) if size == 1.0 else _mask(obj, int(s * size), int(sw * size))
        _paste(f, hand_a, hand_rgb, hx, hy)
        _paste(f, a, c, cx, cy)
        frames[i] = f.astype(np.uint8)
    return frames


def encode_webm(frames: np.ndarray, path: Path, fps: int = FPS) -> None:
    """VP9/WebM through the real ffmpeg; one thread so output is reproducible."""
    t, h, w, _ = frames.shape
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", "-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-b:v", "0",
           "-crf", "32", "-deadline", "realtime", "-cpu-used", "8", "-threads", "1", str(path)]
    try:
        subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    except FileNotFoundError:
        raise UserError("ffmpeg not found; run `make setup` (installs Debian's ffmpeg)") from None
    except subprocess.CalledProcessError as e:
        raise UserError(f"ffmpeg failed on {path.name}: {e.stderr.decode(errors='replace').strip()}") from None


def _make_clip(job) -> None:
    k, seed, obj, act, path = job
    encode_webm(render(obj, act, np.random.default_rng([seed, k])), path)


def _plan(videos: int, seed: int) -> tuple[list, dict]:
    """(id, split, object, action) per clip, and the held-out sets.

    Train cycles through the seen cells, so every seen cell has about the same number of
    clips. Validation cycles through every cell, held-out ones twice as often, so the
    evaluator sees each held-out cell and keeps held-back clips of it."""
    held = heldout_sets(seed)
    never = set(held["heldout_objects"]) | set(held["unreachable"])
    pairs = {tuple(p) for p in held["heldout_pairs"]}
    cells = [(o, d) for o in OBJECTS for d in DIRECTIONS]
    seen = [c for c in cells if c[0] not in never and c not in pairs]
    heldout = [c for c in cells if c[0] in never or c in pairs]
    rng = np.random.default_rng(seed)
    n_val = max(2, round(VAL_SHARE * videos))
    ids = rng.choice(np.arange(10_000, 1_000_000), size=videos, replace=False)
    seen_order = [seen[i] for i in rng.permutation(len(seen))]
    val_order = [heldout[i] for i in rng.permutation(len(heldout))]
    val_order = [c for pair in zip(val_order, val_order) for c in pair] + seen_order  # held-out twice
    plan = []
    for i in range(videos):
        split = "validation" if i >= videos - n_val else "train"
        if rng.random() < SHOW_SHARE:
            obj, act = OBJECTS[rng.integers(len(OBJECTS))], "show"
            if split == "train" and obj in never:
                obj = seen[rng.integers(len(seen))][0]
        elif split == "train":
            obj, act = seen_order[i % len(seen_order)]
        else:
            obj, act = val_order[(i - (videos - n_val)) % len(val_order)]
        plan.append((str(ids[i]), split, obj, act))
    return plan, held


def make_toy(out, videos: int = 200, seed: int = 0, progress: bool = True, workers: int = 0) -> dict:
    """``workers``: processes rendering and encoding (0: one per CPU)."""
    if videos < 4:
        raise UserError("--videos must be at least 4")
    out = Path(out)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    plan, held = _plan(videos, seed)
    labels = {"train": [], "validation": []}
    jobs = [(k, seed, obj, act, out / "videos" / f"{vid}.webm") for k, (vid, _, obj, act) in enumerate(plan)]
    # Each clip depends only on (seed, k): any number of workers writes the same files.
    n = max(1, min(workers or (os.cpu_count() or 1), len(jobs)))
    with concurrent.futures.ProcessPoolExecutor(n) if n > 1 else contextlib.nullcontext() as pool:
        done = pool.map(_make_clip, jobs, chunksize=8) if pool else map(_make_clip, jobs)
        for _ in tqdm(done, total=len(jobs), desc="toy videos", unit="clip", disable=not progress):
            pass
    for vid, split, obj, act in plan:
        template = TEMPLATES[act]
        label = fill(template, [obj])
        labels[split].append({"id": vid, "label": label[0].lower() + label[1:],
                              "template": template, "placeholders": [obj]})
    for split, rows in labels.items():
        write_json(out / "labels" / f"{split}.json", rows)
    meta = {"seed": seed, "videos": videos, "fps": FPS, "objects": OBJECTS,
            "templates": {k: v for k, v in TEMPLATES.items()},
            "heldout_pairs": [[o, TEMPLATES[d]] for o, d in held["heldout_pairs"]],
            "heldout_objects": held["heldout_objects"],
            "unreachable": held["unreachable"],
            "counts": {k: len(v) for k, v in labels.items()}}
    write_json(out / "toy_meta.json", meta)  # last: its presence says the data set is complete
    return meta
