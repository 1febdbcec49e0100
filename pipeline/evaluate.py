"""Evaluation: does the generator show the prompted action on the prompted object?

The evaluator is a small 3D CNN trained on the real clips of the dataset itself
(no downloaded weights) with two heads, template and object. It is cached by a
hash of the data's manifests, so it is trained once per dataset. With it:

- conditional accuracy: share of generated clips whose template *and* object
  the evaluator recognises, for prompts seen in training and for held-out ones
  (every template x object pair the data knows but training never had: new
  pairs of known objects, and objects training never saw);
- Frechet distance between real and generated clips in the evaluator's feature
  space (FVD-style with self-trained features, *not* I3D-FVD; ``--i3d`` adds
  the real thing from a user-supplied TorchScript I3D);
- diversity: mean pairwise feature distance between samples of one prompt;
- the evaluator's accuracy on real validation clips: the ceiling for the above.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn
from tqdm import tqdm

from .data import read_manifest
from .errors import UserError
from .files import atomic_write, write_json
from .labels import fill
from .models import render
from .sample import conditions, load_generator
from .text import tokenize
from .tracking import default_uri
from .tracking_server import resolve

EVALUATOR_VERSION = 4  # bump when the classifier or its training changes: old caches are then ignored


@dataclass(frozen=True)
class EvalConfig:
    run_dir: Path
    data: tuple[Path, ...] = ()  # frames outputs with real clips; default: the data the run trained on
    checkpoint: Optional[str] = None  # step or path; default: newest
    samples: int = 8  # per prompt
    max_prompts: int = 200  # per group (seen / held-out), a seeded subset beyond that
    seed: int = 0
    i3d: Optional[Path] = None
    cache: Optional[Path] = None  # default: <first data dir>/evaluators
    steps: int = 250  # evaluator training steps (the toy world reads 1.000 on held-back real clips from 200 on)
    min_clips: int = 3  # an object needs this many real clips to be a class
    device: str = "auto"


# ----------------------------------------------------------------------------- the classifier


class Evaluator(nn.Module):
    """Two views of a clip: a 3D CNN over the whole clip at half resolution for the template
    (motion needs time, not detail), and a 2D CNN over a few full-resolution frames for the
    object (at 32 px an object is ~12 px; pooling space early, as the 3D body does, loses the
    strokes that tell one digit glyph from another)."""

    OBJECT_FRAMES = (0, 5, 10, 15)

    def __init__(self, n_templates: int, n_objects: int, ch: int = 16):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(), nn.MaxPool3d(2)]

        def block2d(cin, cout, pool):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()] \
                + ([nn.MaxPool2d(2)] if pool else [])

        # Halving time and space at every block keeps it to seconds of CPU per hundred steps.
        self.body = nn.Sequential(*block(3, ch), *block(ch, 2 * ch), *block(2 * ch, 4 * ch),
                                  nn.Conv3d(4 * ch, 4 * ch, 3, padding=1), nn.ReLU())
        self.frames = nn.Sequential(*block2d(3, ch, False), *block2d(ch, 2 * ch, True),
                                    *block2d(2 * ch, 4 * ch, True), *block2d(4 * ch, 4 * ch, False))
        self.template = nn.Linear(4 * ch, n_templates)
        self.object = nn.Linear(4 * ch, n_objects)

    def _views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, t, h, w = x.shape
        idx = [min(i * t // 16, t - 1) for i in self.OBJECT_FRAMES]
        frames = x[:, :, idx].transpose(1, 2).reshape(b * len(idx), c, h, w)
        f_obj = self.frames(frames).mean((2, 3)).view(b, len(idx), -1).mean(1)  # B, 4ch
        # At 16 px a card's path still reads, and the body costs a quarter: it was over half of
        # the evaluator's step, which `make demo` pays once (the same readings, docs/quality.md).
        return self.body(F.avg_pool3d(x, (1, 2, 2))).mean((2, 3, 4)), f_obj

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._views(x), 1)  # B, 8ch

    def forward(self, x):
        f_t, f_o = self._views(x)
        return self.template(f_t), self.object(f_o)


def _object(placeholders: str) -> str:
    return " ".join(json.loads(placeholders))


def labelled_rows(data: Path):
    """A frames output's manifest, each row with its object phrase and its data dir."""
    df = read_manifest(data)
    df["object"] = df["placeholders"].map(_object)
    df["data"] = str(data)
    return df


def _is_val(video_id: str) -> bool:
    return int(hashlib.sha1(video_id.encode()).hexdigest(), 16) % 5 == 0  # a stable 20%


def load_clips(df) -> torch.Tensor:
    """uint8 (N,T,H,W,3) for the manifest rows, read shard by shard."""
    out = []
    for (data, shard), part in df.groupby(["data", "shard"], sort=False):
        with h5py.File(Path(data) / "shards" / shard, "r") as f:
            v = f["videos"]
            out.append((part.index.to_numpy(), np.stack([v[int(i)] for i in part["index"]])))
    order = np.concatenate([i for i, _ in out])
    clips = np.concatenate([c for _, c in out])
    pos = {k: j for j, k in enumerate(order)}
    return torch.from_numpy(clips[[pos[k] for k in df.index]])


def to_input(u8: torch.Tensor) -> torch.Tensor:
    return u8.permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (B,3,T,H,W) in [-1, 1]


def _data_hash(cfg: EvalConfig) -> str:
    h = hashlib.sha256(f"v{EVALUATOR_VERSION} steps={cfg.steps} min_clips={cfg.min_clips}".encode())
    for d in sorted(cfg.data, key=str):
        h.update((Path(d) / "manifest.csv").read_bytes())
    return h.hexdigest()[:16]


def accuracy(model, x, t, o, batch=128) -> dict:
    pt, po = predict(model, x, batch)
    return {"template": float((pt == t).float().mean()), "object": float((po == o).float().mean()),
            "joint": float(((pt == t) & (po == o)).float().mean())}


@torch.no_grad()
def predict(model, x: torch.Tensor, batch=128):
    model.eval()
    lt, lo = zip(*(model(x[i:i + batch]) for i in range(0, len(x), batch)))
    return torch.cat(lt).argmax(1), torch.cat(lo).argmax(1)


@torch.no_grad()
def features(model, x: torch.Tensor, batch=128) -> np.ndarray:
    model.eval()
    f = torch.cat([model.features(x[i:i + batch]) for i in range(0, len(x), batch)])
    return f.double().cpu().numpy()  # on CUDA too: .numpy() of a GPU tensor raises


def _fit(x, t, o, tr, n_templates: int, n_objects: int, cfg: EvalConfig, progress: bool) -> nn.Module:
    """Train the classifier on clips ``x[tr]`` from its own seeds: the caller's torch and
    NumPy random streams are left as they were (training evaluates mid-run, and a resumed
    run must draw the same numbers as a straight one)."""
    rng = np.random.default_rng(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Evaluator(n_templates, n_objects)
        opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=cfg.steps)
        model.train()
        # Class-balanced batches: an object seen only in the validation split (a held-out one) has
        # a few clips against dozens of its neighbour's, and would otherwise lose every close call.
        freq = torch.bincount(o[tr], minlength=n_objects).float()
        weight = 1 / freq[o[tr]]
        for _ in tqdm(range(cfg.steps), desc="evaluator", unit="step", disable=not progress):
            idx = tr[torch.multinomial(weight, min(32, len(tr)), replacement=True)]
            xb = x[idx]
            # Augment what a generator gets wrong but a class does not depend on:
            # brightness, noise and a shift of a few pixels (never a flip: that reverses direction).
            xb = xb * (1 + 0.2 * (torch.rand(len(xb), 1, 1, 1, 1) - 0.5)) + 0.05 * torch.randn_like(xb)
            dy, dx = rng.integers(-3, 4, size=2)
            xb = torch.roll(xb, (int(dy), int(dx)), (3, 4))
            lt, lo = model(xb)
            loss = F.cross_entropy(lt, t[idx]) + F.cross_entropy(lo, o[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model


def train_evaluator(cfg: EvalConfig, progress: bool = True) -> dict:
    """The cached evaluator for cfg.data, trained here if the cache has none."""
    df = __import__("pandas").concat([labelled_rows(d) for d in cfg.data], ignore_index=True)
    df = df.drop_duplicates("id")
    counts = df["object"].value_counts()
    df = df[df["object"].isin(counts[counts >= cfg.min_clips].index)].reset_index(drop=True)
    if df.empty:
        raise UserError(f"no object has {cfg.min_clips}+ real clips in {', '.join(map(str, cfg.data))}")
    cache = Path(cfg.cache or Path(cfg.data[0]) / "evaluators")
    path = cache / f"evaluator-{_data_hash(cfg)}.pt"
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = Evaluator(len(state["templates"]), len(state["objects"]))
            model.load_state_dict(state["model"])
            return dict(state, model=model.eval(), path=path, cached=True)
        except Exception as e:  # noqa: BLE001  a torn or foreign cache file: train a new one over it
            print(f"warning: cached evaluator {path} is unreadable ({type(e).__name__}); training it again",
                  file=sys.stderr)

    templates, objects = sorted(set(df["template"])), sorted(set(df["object"]))
    t = torch.tensor([templates.index(v) for v in df["template"]])
    o = torch.tensor([objects.index(v) for v in df["object"]])
    x = to_input(load_clips(df))
    val = torch.tensor(df["id"].map(_is_val).to_numpy(dtype=bool))
    tr = (~val).nonzero().squeeze(1)
    model = _fit(x, t, o, tr, len(templates), len(objects), cfg, progress)
    model.eval()
    acc = accuracy(model, x[val], t[val], o[val]) if val.any() else None
    state = {"model": model.state_dict(), "templates": templates, "objects": objects, "val_acc": acc,
             "n_train": int(len(tr)), "n_val": int(val.sum()), "data": [str(d) for d in cfg.data],
             "version": EVALUATOR_VERSION}
    # Concurrent evaluations: the last complete file wins, none is torn.
    atomic_write(path, lambda p: torch.save(state, p))
    return dict(state, model=model, path=path, cached=False)


# ----------------------------------------------------------------------------- metrics


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    eye = 1e-6 * np.eye(a.shape[1])  # dead ReLU features make a covariance singular
    s1, s2 = np.cov(a, rowvar=False) + eye, np.cov(b, rowvar=False) + eye
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def mean_pairwise(groups) -> float | None:
    """Mean L2 distance between members of the same group, averaged over groups of 2+."""
    vals = []
    for f in groups:
        if len(f) >= 2:
            d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
            vals.append(d[np.triu_indices(len(f), 1)].mean())
    return float(np.mean(vals)) if vals else None


def load_i3d(path: Path):
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"--i3d {path}: not a loadable TorchScript file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})") from None


def i3d_features(path: Path, x: torch.Tensor, batch: int = 8) -> np.ndarray:
    """Features of a user-supplied TorchScript I3D: clips resized to 224 px, in [-1, 1]."""
    net = load_i3d(path)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            b, c, t, h, w = xb.shape
            xb = F.interpolate(xb.transpose(1, 2).reshape(b * t, c, h, w), size=(224, 224), mode="bilinear",
                               align_corners=False).view(b, t, c, 224, 224).transpose(1, 2)
            out.append(net(xb).reshape(b, -1).double())
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- the stage


def _kind(obj: str, placeholders, train_objects: set, train_words: set) -> str:
    """How a held-out cell is new: "new_pair" (a seen object, a template it never had),
    "new_object" (never seen, but every word of its name was), or "unreachable" (a word of
    its name never occurs in training, so no model can know its look: a control)."""
    if obj in train_objects:
        return "new_pair"
    return "new_object" if set(tokenize(" ".join(placeholders))) <= train_words else "unreachable"


def prompts_for(train, ev: dict, data, max_prompts: int, seed: int):
    """Seen and held-out (template, placeholders, kind) prompts the evaluator can score;
    ``train``: the run's training manifest rows."""
    pairs = set(zip(train["template"], train["object"]))
    train_objects, train_templates = set(train["object"]), set(train["template"])
    ph = {}
    for d in data:  # this call's dirs: a cached evaluator may have been trained from another path
        for _, r in labelled_rows(Path(d)).iterrows():
            ph.setdefault(r["object"], json.loads(r["placeholders"]))
    for _, r in train.iterrows():
        ph.setdefault(r["object"], json.loads(r["placeholders"]))
    train_words = {w for t, o in pairs for w in tokenize(t.replace("[something]", " ") + " " + o)}
    seen, held = [], []
    for tmpl in ev["templates"]:
        if tmpl not in train_templates:
            continue
        for obj in ev["objects"]:
            if tmpl.count("[") != len(ph[obj]):
                continue
            if (tmpl, obj) in pairs:
                seen.append((tmpl, obj, "seen"))
            else:
                held.append((tmpl, obj, _kind(obj, ph[obj], train_objects, train_words)))
    rng = np.random.default_rng(seed)
    pick = lambda xs: [xs[i] for i in sorted(rng.choice(len(xs), max_prompts, replace=False))] \
        if len(xs) > max_prompts else xs  # noqa: E731
    return pick(seen), pick(held), ph


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def evaluate_generator(G, step: int, run_cfg: dict, vocab, cfg: EvalConfig, progress: bool = True) -> dict:
    """All metrics for one generator; used by ``run`` and by training's eval_every."""
    device = _device(cfg.device)
    ev = train_evaluator(cfg, progress)
    model = ev["model"].to(device)
    train = labelled_rows(Path(run_cfg["data"]))  # read once: prompts and the real clips both need it
    seen, held, ph = prompts_for(train, ev, cfg.data, cfg.max_prompts, cfg.seed)
    if not seen:
        raise UserError("no prompt of the training data is known to the evaluator")
    prompts = seen + held
    cond = conditions(vocab, [fill(t, ph[o]) for t, o, _ in prompts])
    was_training = G.training
    G.eval()
    gen = render(G, cond, cfg.samples, cfg.seed, device)  # P,n,3,T,H,W
    G.train(was_training)
    flat = gen.flatten(0, 1).to(device)
    pt, po = predict(model, flat)
    t_idx = torch.tensor([ev["templates"].index(t) for t, _, _ in prompts]).repeat_interleave(cfg.samples)
    o_idx = torch.tensor([ev["objects"].index(o) for _, o, _ in prompts]).repeat_interleave(cfg.samples)
    ok_t, ok_o = (pt.cpu() == t_idx), (po.cpu() == o_idx)
    kinds = np.repeat([k for _, _, k in prompts], cfg.samples)

    def acc(mask_kinds, hit):
        m = torch.from_numpy(np.isin(kinds, mask_kinds))
        return float(hit[m].float().mean()) if m.any() else None

    gen_f = features(model, flat)
    real_df = train
    if len(real_df) > 2000:
        real_df = real_df.sample(2000, random_state=cfg.seed)
    real_x = to_input(load_clips(real_df.reset_index(drop=True))).to(device)
    real_f = features(model, real_x)
    seen_f = gen_f[: len(seen) * cfg.samples]
    per_prompt = [gen_f[i * cfg.samples:(i + 1) * cfg.samples] for i in range(len(prompts))]
    real_groups = [real_f[np.flatnonzero((real_df["template"].to_numpy() == t) & (real_df["object"].to_numpy() == o))]
                   for t, o, _ in seen]
    half = np.random.default_rng(cfg.seed).permutation(len(real_f))
    nt, no = len(ev["templates"]), len(ev["objects"])
    out = {
        "step": step,
        "cond_acc_seen": acc(["seen"], ok_t & ok_o),
        "cond_acc_heldout": acc(["new_pair", "new_object"], ok_t & ok_o),
        "cond_acc_heldout_pairs": acc(["new_pair"], ok_t & ok_o),
        "cond_acc_heldout_objects": acc(["new_object"], ok_t & ok_o),
        "cond_acc_unreachable": acc(["unreachable"], ok_t & ok_o),  # a control: never in cond_acc_heldout
        "template_acc_seen": acc(["seen"], ok_t), "object_acc_seen": acc(["seen"], ok_o),
        "template_acc_heldout": acc(["new_pair", "new_object"], ok_t),
        "object_acc_heldout": acc(["new_pair", "new_object"], ok_o),
        "chance": 1 / (nt * no), "chance_template": 1 / nt, "chance_object": 1 / no,
        "frechet": frechet(real_f, seen_f),
        # Two halves of the real clips: what the Frechet distance reads at this sample size for "perfect".
        "frechet_real_halves": frechet(real_f[half[: len(half) // 2]], real_f[half[len(half) // 2:]])
        if len(real_f) >= 8 else None,
        "diversity": mean_pairwise(per_prompt[: len(seen)]),
        "diversity_real": mean_pairwise(real_groups),
        "evaluator_real_acc": ev["val_acc"]["joint"] if ev["val_acc"] else None,
        "evaluator_real_acc_template": ev["val_acc"]["template"] if ev["val_acc"] else None,
        "evaluator_real_acc_object": ev["val_acc"]["object"] if ev["val_acc"] else None,
        "n_prompts_seen": len(seen), "n_prompts_heldout": len(held), "samples_per_prompt": cfg.samples,
        "n_templates": nt, "n_objects": no, "n_real": len(real_f),
        "evaluator": str(ev["path"]), "evaluator_cached": ev["cached"],
        "feature_space": "self-trained evaluator (FVD-style, NOT I3D-FVD)",
    }
    if cfg.i3d:
        out["fvd_i3d"] = frechet(i3d_features(cfg.i3d, real_x.cpu()), i3d_features(cfg.i3d, flat[: len(seen_f)].cpu()))
    cells = [{"template": t, "object": o, "kind": k,
              "acc": float((ok_t & ok_o)[i * cfg.samples:(i + 1) * cfg.samples].float().mean()),
              "template_acc": float(ok_t[i * cfg.samples:(i + 1) * cfg.samples].float().mean()),
              "object_acc": float(ok_o[i * cfg.samples:(i + 1) * cfg.samples].float().mean())}
             for i, (t, o, k) in enumerate(prompts)]
    held_accs = [c["acc"] for c in cells if c["kind"] in ("new_pair", "new_object")]
    out["min_cell_acc_heldout"] = min(held_accs) if held_accs else None
    out["min_cell_acc_seen"] = min(c["acc"] for c in cells if c["kind"] == "seen")
    out["prompts"] = cells  # per cell (template x object): accuracy and kind
    return out


METRIC_KEYS = ("cond_acc_seen", "cond_acc_heldout", "cond_acc_heldout_pairs", "cond_acc_heldout_objects",
               "cond_acc_unreachable", "min_cell_acc_heldout", "min_cell_acc_seen",
               "template_acc_seen", "object_acc_seen", "template_acc_heldout", "object_acc_heldout", "chance",
               "frechet", "frechet_real_halves", "diversity", "diversity_real", "evaluator_real_acc", "fvd_i3d")


def table(r: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"evaluation at step {r['step']} ({r['n_prompts_seen']} seen + {r['n_prompts_heldout']} held-out prompts "
        f"x {r['samples_per_prompt']} samples; {r['n_templates']} templates x {r['n_objects']} objects)",
        f"{'':28}{'template+object':>16}{'template':>10}{'object':>10}",
        f"{'cond. accuracy, seen':28}{f(r['cond_acc_seen']):>16}{f(r['template_acc_seen']):>10}"
        f"{f(r['object_acc_seen']):>10}",
        f"{'cond. accuracy, held-out':28}{f(r['cond_acc_heldout']):>16}{f(r['template_acc_heldout']):>10}"
        f"{f(r['object_acc_heldout']):>10}",
        f"{'  new pairs / new objects':28}{f(r['cond_acc_heldout_pairs']) + ' / ' + f(r['cond_acc_heldout_objects']):>16}",
        f"{'  worst held-out cell':28}{f(r.get('min_cell_acc_heldout')):>16}",
        f"{'unreachable (control)':28}{f(r.get('cond_acc_unreachable')):>16}   (an object named by a word "
        "training never saw)",
        f"{'chance':28}{f(r['chance']):>16}{f(r['chance_template']):>10}{f(r['chance_object']):>10}",
        f"{'evaluator on real val clips':28}{f(r['evaluator_real_acc']):>16}{f(r['evaluator_real_acc_template']):>10}"
        f"{f(r['evaluator_real_acc_object']):>10}   (the ceiling)",
        f"frechet {f(r['frechet'])} (real vs real halves: {f(r['frechet_real_halves'])}) in {r['feature_space']}",
        f"diversity {f(r['diversity'])} (real clips of one prompt: {f(r['diversity_real'])})",
    ]
    if "fvd_i3d" in r:
        lines.append(f"FVD (user-supplied I3D) {f(r['fvd_i3d'])}")
    return "\n".join(lines)


KIND_MARK = {"seen": "", "new_pair": "P", "new_object": "O", "unreachable": "U"}


def _grid(cells):
    templates = sorted({c["template"] for c in cells})
    objects = sorted({c["object"] for c in cells})
    at = {(c["template"], c["object"]): c for c in cells}
    return templates, objects, at


def short_template(t: str) -> str:
    return t.replace("[something]", "...").replace("Pushing ... from ", "push ").replace("Moving ... ", "move ")


def cell_table(r: dict) -> str:
    """Per-cell joint accuracy, objects x templates; P/O/U mark held-out pairs, held-out
    objects and the unreachable control."""
    templates, objects, at = _grid(r["prompts"])
    w = max(len(o) for o in objects) + 2
    lines = [" " * w + "".join(f"{short_template(t)[:16]:>18}" for t in templates)]
    for o in objects:
        cols = []
        for t in templates:
            c = at.get((t, o))
            cols.append("" if c is None else f"{c['acc']:.2f} {KIND_MARK[c['kind']]:1}")
        lines.append(f"{o:<{w}}" + "".join(f"{x:>18}" for x in cols))
    lines.append("P: held-out pair, O: held-out object, U: unreachable control (not in held-out accuracy)")
    return "\n".join(lines)


def write_heatmap(r: dict, path: Path) -> Path:
    """A PNG of per-cell accuracy: objects x templates, held-out cells outlined and lettered."""
    import matplotlib  # heavy and only needed here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    templates, objects, at = _grid(r["prompts"])
    acc = np.full((len(objects), len(templates)), np.nan)
    for (t, o), c in at.items():
        acc[objects.index(o), templates.index(t)] = c["acc"]
    fig, ax = plt.subplots(figsize=(1.4 * len(templates) + 2.5, 0.38 * len(objects) + 1.6), dpi=100)
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    colours = {"new_pair": "#ff4d4d", "new_object": "#ff9f1a", "unreachable": "#bbbbbb"}
    for (t, o), c in at.items():
        y, x = objects.index(o), templates.index(t)
        ax.text(x, y, f"{c['acc']:.2f}{' ' + KIND_MARK[c['kind']] if c['kind'] != 'seen' else ''}", ha="center",
                va="center", fontsize=8, color="white" if c["acc"] < 0.6 else "black")
        if c["kind"] in colours:
            ax.add_patch(plt.Rectangle((x - 0.48, y - 0.46), 0.96, 0.92, fill=False, lw=2, ec=colours[c["kind"]]))
    ax.set_xticks(range(len(templates)), [short_template(t) for t in templates], fontsize=8)
    ax.set_yticks(range(len(objects)), objects, fontsize=8)
    ax.set_title(f"step {r['step']}: template+object accuracy per cell\n"
                 "outlined: held-out pair P (red), held-out object O (orange), unreachable U (grey)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))  # the temp name has no suffix
    plt.close(fig)
    return path


def log_to_mlflow(run_dir: Path, run_cfg: dict, r: dict, eval_json: Path | None = None) -> str | None:
    """Metrics (at the checkpoint's step) on the run's own MLflow run; never fatal."""
    id_file = Path(run_dir) / "mlflow_run_id"
    if not id_file.exists():
        return None
    try:
        from mlflow.entities import Metric  # mlflow takes seconds to import: only where it logs
        from mlflow.tracking import MlflowClient

        store = run_cfg.get("tracking_uri") or default_uri(Path.cwd())
        client = MlflowClient(tracking_uri=resolve(store, run_cfg.get("tracking_server"), wait_s=30))
        run_id = id_file.read_text().strip()
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(r[k]), now, r["step"]) for k in METRIC_KEYS
                                          if r.get(k) is not None])
        if eval_json:
            client.log_artifact(run_id, str(eval_json), "eval")
        if r.get("heatmap"):
            client.log_artifact(run_id, r["heatmap"], "eval")
        return run_id
    except Exception as e:  # noqa: BLE001
        print(f"warning: could not log to MLflow ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
        return None


def validate(cfg: EvalConfig) -> None:
    """The numbers of an EvalConfig, checked before any work (or submission)."""
    if cfg.samples < 2:
        raise UserError("--samples must be >= 2 (diversity compares samples of one prompt)")
    for name, v in (("--evaluator-steps", cfg.steps), ("--max-prompts", cfg.max_prompts),
                    ("--min-clips", cfg.min_clips)):
        if v < 1:
            raise UserError(f"{name} must be >= 1, not {v}")


def run(cfg: EvalConfig, progress: bool = True) -> dict:
    run_dir = Path(cfg.run_dir)
    saved = run_dir / "config.json"
    if not saved.exists():
        raise UserError(f"{run_dir} is not a training run dir (no config.json)")
    run_cfg = json.loads(saved.read_text())
    if not cfg.data:
        cfg = replace(cfg, data=(Path(run_cfg["data"]),))
    validate(cfg)
    if cfg.i3d:
        load_i3d(cfg.i3d)  # a bad file fails now, not after the evaluator has trained
    g = load_generator(run_dir, cfg.checkpoint, _device(cfg.device))
    r = evaluate_generator(g.G, g.step, run_cfg, g.vocab, cfg, progress)
    r.update(checkpoint=str(g.checkpoint), run_dir=str(run_dir), data=[str(d) for d in cfg.data])
    r["heatmap"] = str(write_heatmap(r, run_dir / "eval_heatmap.png"))
    path = run_dir / "eval.json"
    write_json(path, r)
    r["mlflow_run_id"] = log_to_mlflow(run_dir, run_cfg, r, path)
    return r
