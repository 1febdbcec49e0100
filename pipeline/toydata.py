"""A small, deterministic stand-in for something-something-v2.

``make_toy(out, videos=N, seed=S)`` writes the real dataset's on-disk format:
``labels/{train,validation}.json`` and ``videos/<id>.webm`` (VP9, 12 fps,
96-240 px high, 2-5 s). Each clip shows one object (a coloured shape or a
handwritten digit from scikit-learn's bundled ``load_digits``) pushed or moved
by a "hand" in the direction its caption says. Some object/direction pairs and
two whole objects never appear in train: they are the held-out prompts that
evaluation uses, listed in ``toy_meta.json``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
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
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SKIN = (224, 172, 140)  # the pushing "hand"
SHAPES = ("square", "circle", "triangle")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
OBJECTS = [f"{c} {s}" for c in COLOURS for s in SHAPES] + [f"digit {d}" for d in DIGITS]
# Never in train: a reversed direction for some objects, and two new objects
# whose words are all known from other objects (the seed README's suggestion).
HELDOUT_PAIRS = [("red square", "rtl"), ("blue circle", "up"), ("green triangle", "down"),
                 ("digit three", "rtl"), ("digit seven", "ltr"), ("yellow circle", "down")]
HELDOUT_OBJECTS = ["yellow triangle", "digit eight"]
SHOW_SHARE = 0.1


def _is_heldout(obj: str, d: str) -> bool:
    return obj in HELDOUT_OBJECTS or (obj, d) in HELDOUT_PAIRS


@functools.cache
def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits  # a second to import, for toy data only

    data = load_digits()
    # One fixed exemplar per class keeps the object's look consistent.
    return np.stack([data.images[np.flatnonzero(data.target == k)[0]] / 16.0 for k in range(10)])


def _mask(obj: str, s: int, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Alpha (s,s) and colour image (s,s,3) of an object of side ``s`` px."""
    yy, xx = (np.mgrid[0:s, 0:s] + 0.5) / s * 2 - 1  # [-1, 1]
    if obj.startswith("digit "):
        img = digits[DIGITS.index(obj.split()[1])]
        idx = np.minimum((np.arange(s) * 8) // s, 7)
        ink = img[idx][:, idx]
        rgb = np.empty((s, s, 3))
        rgb[:] = (250, 250, 245)  # a white card ...
        rgb -= ink[..., None] * np.array([230, 220, 170])  # ... with dark-blue ink
        return np.ones((s, s)), rgb
    colour, shape = obj.split()
    if shape == "square":
        alpha = (np.abs(xx) < 0.8) & (np.abs(yy) < 0.8)
    elif shape == "circle":
        alpha = xx**2 + yy**2 < 0.85
    else:
        alpha = (yy < 0.8) & (yy > 1.9 * np.abs(xx) - 0.9)
    rgb = np.empty((s, s, 3))
    rgb[:] = COLOURS.get(colour, SKIN)
    return alpha.astype(float), rgb


def _paste(frame: np.ndarray, alpha: np.ndarray, rgb: np.ndarray, cx: float, cy: float) -> None:
    h, w = frame.shape[:2]
    s = alpha.shape[0]
    x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    a = alpha[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0, None]
    region = frame[fy0:fy1, fx0:fx1]
    region[:] = a * rgb[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] + (1 - a) * region


def render(obj: str, action: str, rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """Frames (T,H,W,3) uint8 of ``obj`` doing ``action`` (a TEMPLATES key)."""
    h = int(rng.integers(48, 121)) * 2
    w = int(round(h * rng.uniform(1.2, 1.8) / 2)) * 2
    t = int(rng.integers(2 * FPS, 5 * FPS + 1))
    # Background: a tinted table top with a soft gradient and fixed grain.
    base = rng.uniform(150, 215, size=3)
    grad = np.linspace(-18, 18, h)[:, None, None] * rng.choice([-1, 1])
    grain = rng.normal(0, 4, size=(h, w, 1))
    bg = np.clip(base + grad + grain, 0, 255)
    s = int(h * rng.uniform(0.25, 0.35))
    alpha, rgb = _mask(obj, s, digits)
    hand_a, hand_rgb = _mask("hand circle", int(s * 0.8), digits)
    # Eased motion between random start/end points along the caption's axis.
    p = np.linspace(0, 1, t)
    p = p * p * (3 - 2 * p)
    lo, hi = rng.uniform(0.12, 0.25), rng.uniform(0.75, 0.88)
    cross = rng.uniform(0.4, 0.6)
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        f = bg.copy()
        size = s
        if action in ("ltr", "rtl"):
            u = lo + (hi - lo) * (p[i] if action == "ltr" else 1 - p[i])
            cx, cy = u * w, cross * h
            hx, hy = cx + (-1 if action == "ltr" else 1) * s * 0.75, cy
        elif action in ("up", "down"):
            u = lo + (hi - lo) * (1 - p[i] if action == "up" else p[i])
            cx, cy = cross * w, u * h
            hx, hy = cx, cy + (1 if action == "up" else -1) * s * 0.75
        else:  # show: the object comes closer to the camera
            size = int(s * (1 + 0.8 * p[i]))
            cx, cy = w / 2, h / 2
            hx, hy = cx, cy + size * 0.6
        a, c = (alpha, rgb) if size == s else _mask(obj, size, digits)
        _paste(f, hand_a, hand_rgb, hx, hy)
        _paste(f, a, c, cx, cy)
        frames[i] = f.astype(np.uint8)
    return frames


def encode_webm(frames: np.ndarray, path: Path, fps: int = FPS) -> None:
    """VP9/WebM through the real ffmpeg; one thread so output is reproducible."""
    t, h, w, _ = frames.shape
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", str(fps), "-i", "-", "-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-b:v", "0",
           "-crf", "36", "-deadline", "realtime", "-cpu-used", "8", "-threads", "1", str(path)]
    try:
        subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    except FileNotFoundError:
        raise UserError("ffmpeg not found; run `make setup` (installs Debian's ffmpeg)") from None
    except subprocess.CalledProcessError as e:
        raise UserError(f"ffmpeg failed on {path.name}: {e.stderr.decode(errors='replace').strip()}") from None


def _make_clip(job) -> None:
    k, seed, obj, act, path = job
    encode_webm(render(obj, act, np.random.default_rng([seed, k]), _digits()), path)


def make_toy(out, videos: int = 200, seed: int = 0, progress: bool = True, workers: int = 0) -> dict:
    """``workers``: processes rendering and encoding (0: one per CPU)."""
    if videos < 4:
        raise UserError("--videos must be at least 4")
    out = Path(out)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    seen = [(o, d) for o in OBJECTS for d in DIRECTIONS if not _is_heldout(o, d)]
    heldout = [(o, d) for o in OBJECTS for d in DIRECTIONS if _is_heldout(o, d)]
    n_val = max(2, round(0.2 * videos))
    ids = rng.choice(np.arange(10_000, 1_000_000), size=videos, replace=False)
    plan = []
    for i in range(videos):
        split = "validation" if i >= videos - n_val else "train"
        if rng.random() < SHOW_SHARE:
            obj, act = OBJECTS[rng.integers(len(OBJECTS))], "show"
        elif split == "validation" and i % 2 == 0:
            obj, act = heldout[rng.integers(len(heldout))]
        else:
            obj, act = seen[rng.integers(len(seen))]
        plan.append((str(ids[i]), split, obj, act))
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
            "heldout_pairs": [[o, TEMPLATES[d]] for o, d in HELDOUT_PAIRS],
            "heldout_objects": HELDOUT_OBJECTS,
            "counts": {k: len(v) for k, v in labels.items()}}
    write_json(out / "toy_meta.json", meta)  # last: its presence says the data set is complete
    return meta
