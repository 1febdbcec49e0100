"""Vocabulary stage: captions -> word vectors with fastText, no word left out.

``run(cfg)`` parses the labels, builds the conditioning text per sample
(``object``: the placeholders; ``sentence``: the whole caption), gets a vector
for every token from fastText (trained here on the captions, or a pretrained
``.bin``/``.vec`` read as a stream) and writes:

- ``fasttext.bin``: the model (for a pretrained ``.bin``, a link to it), so a
  new word at sampling time still gets a vector from its subwords;
- ``embeddings.h5``: ``tokens`` and float32 ``vectors``, row 0 = padding;
- ``samples.h5``: per video id, the token ids and the condition vector
  (``condition_vector``);
- ``vocab.json``: counts, config, and every excluded sample with its reason
  (written last: its presence marks a complete output).

``Vocab`` reads that back for training, sampling and ``t2v neighbors``.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import fasttext
import h5py
import numpy as np
from tqdm import tqdm

from .config import to_dict
from .errors import UserError
from .fasttext_bin import MAGIC, FastTextBin
from .files import atomic_path, atomic_write, write_json, write_text
from .labels import SLOT, read_labels
from .text import tokenize

PAD = "<pad>"


@dataclass(frozen=True)
class VocabConfig:
    labels: tuple[Path, ...]
    out: Path
    mode: Literal["object", "sentence", "parts"] = "object"
    pretrained: Optional[Path] = None
    dim: Optional[int] = None  # training default 50; if given with --pretrained it must match
    corpus: tuple[Path, ...] = ()
    epoch: int = 50
    min_count: int = 1
    minn: int = 3
    maxn: int = 6
    bucket: int = 200_000  # hashed n-gram rows; fastText's 2M is sized for web corpora
    skip_bad: bool = False

    @property
    def train_dim(self) -> int:
        return self.dim or 50


def condition_text(mode: str, label: str, placeholders) -> str:
    return " ".join(placeholders) if mode == "object" else label


def condition_vector(vectors: np.ndarray, mode: str) -> np.ndarray:
    """Word vectors (L,D) -> the condition the GAN sees (``object``/``sentence`` modes).

    ``object``: their mean (the original). ``sentence``: [mean; ramp-weighted mean],
    where word i of L has weight 2i/(L-1)-1. A plain mean can't tell "from left to
    right" from "from right to left" (same words); the ramp half can, and still
    takes any free text at sampling time.
    """
    mean = vectors.mean(0)
    if mode == "object":
        return mean.astype(np.float32)
    n = len(vectors)
    ramp = np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
    return np.concatenate([mean, (ramp[:, None] * vectors).mean(0)]).astype(np.float32)


def parts_vector(template_vecs: np.ndarray, object_vecs: np.ndarray) -> np.ndarray:
    """``parts`` mode: [template (2D); object head word (D); its modifiers (D)] (``PARTS``).

    The template block is the sentence encoding of the template's own words; the object
    blocks are the head word and the mean of the other words (in an English noun phrase the last word
    names the thing and the ones before it modify it). Kept apart so the generator can send
    the motion words to its temporal path and the object words to its content path, and so
    a new composition ("yellow pillar") is the sum of parts seen with other partners.
    """
    head = object_vecs[-1]
    mods = object_vecs[:-1].mean(0) if len(object_vecs) > 1 else np.zeros_like(head)
    return np.concatenate([condition_vector(template_vecs, "sentence"), head, mods]).astype(np.float32)


def condition_dim(dim: int, mode: str) -> int:
    return {"object": dim, "sentence": 2 * dim, "parts": 4 * dim}[mode]


def template_words(template: str) -> list[list[str]]:
    """A template's literal token runs around its slots: "Pushing [something] from left to
    right" -> [["pushing"], ["from", "left", "to", "right"]]."""
    return [tokenize(part) for part in template.split(SLOT)]


def match_template(tokens: list[str], templates) -> tuple[str, list[list[str]]] | None:
    """The known template a tokenised prompt fills, and the slot tokens; the template with
    the most literal words wins. None if no template fits."""
    best = None
    for t in templates:
        runs = template_words(t)
        pattern = r"\s*(.+?)\s*".join(re.escape(" ".join(r)) for r in runs)
        m = re.fullmatch(pattern, " ".join(tokens))
        if m and all(g.strip() for g in m.groups()):
            size = sum(map(len, runs))
            if best is None or size > best[0]:
                best = (size, t, [g.split() for g in m.groups()])
    return None if best is None else (best[1], best[2])


WHITEN_EPS = 1e-4  # relative to the largest eigenvalue: caps the gain on near-empty directions


def whitening(conds: np.ndarray, drop_null: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """ZCA whitening (mean, matrix) of the captions' conditions.

    fastText trained on a few thousand captions puts every word near one common
    direction: raw, "left to right" and "right to left" differ by 0.4% of the
    vector's norm, and colours by about as little. Whitened, they are O(1) apart,
    so the GAN's first layers need not learn a 100x gain first.
    """
    x = conds.astype(np.float64)
    mean = x.mean(0)
    lam, u = np.linalg.eigh((x - mean).T @ (x - mean) / len(x))
    lam = np.clip(lam, 0, None)
    if lam.max() < 1e-12:  # one distinct caption: nothing to whiten
        return mean.astype(np.float32), np.eye(len(mean), dtype=np.float32)
    gain = 1 / np.sqrt(lam + WHITEN_EPS * lam.max())
    if drop_null:  # directions no caption varies in: a new word's part there is noise, not meaning
        gain[lam < 1e-6 * lam.max()] = 0
    w = u @ np.diag(gain) @ u.T
    return mean.astype(np.float32), w.astype(np.float32)


PARTS = (2, 1, 1)  # blocks of a parts condition, in word-vector dims: template, object head, modifiers


def block_whitening(conds: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``parts`` mode: whiten the template, the object's head word and its modifiers each on
    their own. No object word leaks into the motion path or the other way round, and each
    block stays a function of its own words: swapping one block between two captions swaps
    exactly the shape or the colour, which is what the discriminator's hard negatives do."""
    means, w, start = [], np.zeros((4 * dim, 4 * dim), np.float32), 0
    for size in (k * dim for k in PARTS):
        m, wb = whitening(conds[:, start:start + size], drop_null=True)
        means.append(m)
        w[start:start + size, start:start + size] = wb
        start += size
    return np.concatenate(means), w


def parse(cfg: VocabConfig):
    """Labels -> kept samples (id, template, text, tokens) and exclusions by reason."""
    if not cfg.labels:
        raise UserError("give at least one --labels file")
    if cfg.epoch < 1:
        raise UserError(f"--epoch must be >= 1, not {cfg.epoch}")
    for extra in cfg.corpus:  # here, before submission, not in the job
        if not Path(extra).is_file():
            raise UserError(f"--corpus file not found: {extra}")
    samples, seen = [], set()
    for path in cfg.labels:
        rows = read_labels(path)
        for s in rows:
            if s.id in seen:
                raise UserError(f"sample id {s.id} occurs in more than one --labels file")
            seen.add(s.id)
        samples += rows
    if not samples:
        raise UserError(f"no samples in {', '.join(map(str, cfg.labels))}")
    kept, excluded = [], {}
    for s in samples:
        reason = None
        if cfg.mode == "object" and not s.placeholders:
            reason = "no_placeholders"
        text = condition_text(cfg.mode, s.label, s.placeholders)
        toks = tokenize(text)
        if reason is None and not toks:
            reason = "no_tokens"
        if reason:
            if not cfg.skip_bad:
                what = {"no_placeholders": "has no placeholders (object mode conditions on them)",
                        "no_tokens": f"has no words to condition on ({text!r})"}[reason]
                raise UserError(f"sample {s.id} {what}; use --skip-bad to exclude such samples "
                                "(they are counted in vocab.json)")
            excluded.setdefault(reason, []).append(s.id)
            continue
        kept.append((s, text, toks))
    return samples, kept, excluded


def _train(cfg: VocabConfig, samples, out: Path) -> Path:
    corpus = out / "corpus.txt"
    lines = [" ".join(tokenize(s.label)) for s in samples]
    for extra in cfg.corpus:
        try:
            text = Path(extra).read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise UserError(f"--corpus file not found: {extra}") from None
        except UnicodeDecodeError as e:
            raise UserError(f"--corpus file {extra} is not UTF-8 (byte {e.start})") from None
        lines += [" ".join(tokenize(line)) for line in text.splitlines()]
    write_text(corpus, "\n".join(line for line in lines if line) + "\n")
    # One thread and fastText's fixed seed: the same corpus gives the same vectors.
    model = fasttext.train_unsupervised(str(corpus), model="skipgram", dim=cfg.train_dim, epoch=cfg.epoch,
                                        minCount=cfg.min_count, minn=cfg.minn, maxn=cfg.maxn,
                                        bucket=cfg.bucket, thread=1, verbose=0)
    dest = out / "fasttext.bin"
    atomic_write(dest, lambda p: model.save_model(str(p)))
    return dest


def _sniff(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise UserError(f"cannot read --pretrained {path}: {e.strerror}") from None
    if len(head) >= 4 and struct.unpack("<i", head[:4])[0] == MAGIC:
        return "bin"
    first = head.split(b"\n", 1)[0].split()
    if len(first) == 2 and all(x.isdigit() for x in first):
        return "vec"
    raise UserError(f"--pretrained {path} is neither a fastText .bin model nor a .vec text file "
                    "(expected the .bin magic number or a '<words> <dim>' header line)")


def check_pretrained(cfg: VocabConfig) -> str | None:
    """Cheap checks of --pretrained (its kind and dim) before any work is submitted."""
    if cfg.pretrained is None:
        return None
    path = Path(cfg.pretrained)
    kind = _sniff(path)
    if kind == "bin":
        with open(path, "rb") as f:
            f.seek(8)
            dim = struct.unpack("<i", f.read(4))[0]
    else:
        with open(path, "rb") as f:
            dim = int(f.readline().split()[1])
    if cfg.dim is not None and cfg.dim != dim:
        raise UserError(f"--dim {cfg.dim} does not match {path}, whose vectors have dim {dim}")
    return kind


def _read_vec(path: Path, wanted: set[str]) -> tuple[dict, int]:
    """Stream a .vec file, keeping only the wanted words' rows."""
    found = {}
    with open(path, "rb") as f:
        n, d = map(int, f.readline().split())
        for lineno, line in enumerate(tqdm(f, total=n, desc="reading .vec", unit="word", mininterval=2), 2):
            word, _, rest = line.rstrip(b"\n").partition(b" ")
            w = word.decode("utf-8", errors="replace")
            if w in wanted and w not in found:
                vec = np.array(rest.split(), dtype=np.float32)
                if vec.shape != (d,):
                    raise UserError(f"{path}:{lineno}: expected {d} numbers for {w!r}, found {vec.size}")
                found[w] = vec
    return found, d


def _vectors(cfg: VocabConfig, kind, samples, wanted: set[str], out: Path):
    """Vectors of the wanted words: from a skipgram trained here, a pretrained .bin (subwords
    kept) or a .vec (words only). Returns (vectors, dim, source, subword_only, no_vector)."""
    if cfg.pretrained is None:
        ft = FastTextBin(_train(cfg, samples, out), words=wanted)
        return {t: ft.word_vector(t) for t in wanted}, ft.dim, "trained", [], []
    if kind == "bin":
        ft = FastTextBin(cfg.pretrained, words=wanted)
        link = out / "fasttext.bin"
        link.unlink(missing_ok=True)
        link.symlink_to(Path(cfg.pretrained).resolve())  # 7 GB is kept where it is, not copied
        subword_only = sorted(t for t in wanted if t not in ft.ids)  # vectors from n-grams alone
        return {t: ft.word_vector(t) for t in wanted}, ft.dim, "pretrained-bin", subword_only, []
    vec, dim = _read_vec(Path(cfg.pretrained), wanted)
    (out / "fasttext.bin").unlink(missing_ok=True)
    no_vector = sorted(wanted - set(vec))  # no subwords in a .vec: these have no vector
    return vec, dim, "pretrained-vec", [], no_vector


def _write_samples(f, rows, token_ids, lengths, condition, cond_mean, cond_whiten) -> None:
    strs = dict(dtype=h5py.string_dtype())
    f.create_dataset("ids", data=[s.id for s, _, _ in rows], **strs)
    f.create_dataset("text", data=[t for _, t, _ in rows], **strs)
    f.create_dataset("label", data=[s.label for s, _, _ in rows], **strs)
    f.create_dataset("template", data=[s.template for s, _, _ in rows], **strs)
    f.create_dataset("token_ids", data=token_ids)
    f.create_dataset("lengths", data=lengths.astype(np.int32))
    f.create_dataset("condition", data=condition)
    f.create_dataset("cond_mean", data=cond_mean)  # condition = (raw - cond_mean) @ cond_whiten
    f.create_dataset("cond_whiten", data=cond_whiten)


def run(cfg: VocabConfig, progress: bool = True) -> dict:
    out = Path(cfg.out)
    samples, kept, excluded = parse(cfg)
    kind = check_pretrained(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").unlink(missing_ok=True)  # not complete until rewritten at the end
    counts = Counter(t for s in samples for t in tokenize(s.label))
    wanted = set(counts) | {t for _, _, toks in kept for t in toks}  # object words missing from a label too
    vec, dim, source, subword_only, no_vector = _vectors(cfg, kind, samples, wanted, out)
    subwords = source != "pretrained-vec"
    tokens = [PAD] + sorted(vec, key=lambda t: (-counts.get(t, 0), t))
    index = {t: i for i, t in enumerate(tokens)}
    table = np.zeros((len(tokens), dim), np.float32)
    for t, i in index.items():
        if i:
            table[i] = vec[t]
    rows = []
    for s, text, toks in kept:
        ids = [index[t] for t in toks if t in index]
        if not ids:
            excluded.setdefault("all_tokens_oov", []).append(s.id)
            continue
        rows.append((s, text, ids))
    if not rows:
        raise UserError("no sample has a word with a vector; see 'no_vector' in vocab.json")
    max_len = max(len(ids) for _, _, ids in rows)
    token_ids = np.zeros((len(rows), max_len), np.int32)
    for i, (_, _, ids) in enumerate(rows):
        token_ids[i, :len(ids)] = ids
    lengths = (token_ids > 0).sum(1)
    if cfg.mode == "parts":
        part = lambda toks: table[[index[t] for t in toks if t in index] or [0]]  # noqa: E731
        raw = np.stack([parts_vector(part(sum(template_words(s.template), [])),
                                     part(tokenize(" ".join(s.placeholders)))) for s, _, _ in rows])
        cond_mean, cond_whiten = block_whitening(raw, dim)
    else:
        raw = np.stack([condition_vector(table[ids], cfg.mode) for _, _, ids in rows])  # N,C
        cond_mean, cond_whiten = whitening(raw)
    condition = ((raw - cond_mean) @ cond_whiten).astype(np.float32)
    with atomic_path(out / "embeddings.h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("tokens", data=tokens, dtype=h5py.string_dtype())
        f.create_dataset("vectors", data=table)
        f.attrs.update(dim=dim, source=source, mode=cfg.mode)
    with atomic_path(out / "samples.h5") as tmp, h5py.File(tmp, "w") as f:
        _write_samples(f, rows, token_ids, lengths, condition, cond_mean, cond_whiten)
        f.attrs.update(mode=cfg.mode, dim=dim, cond_dim=condition.shape[1])
    info = {
        "config": to_dict(cfg), "source": source, "subwords": subwords, "dim": dim, "mode": cfg.mode,
        "n_labels": len(samples), "n_samples": len(rows), "n_tokens": len(tokens) - 1,
        "condition": {"encoding": {"object": "mean", "sentence": "mean+ramp",
                                   "parts": "template mean+ramp | object head, modifiers"}[cfg.mode],
                      "dim": int(raw.shape[1]), "whitening": f"zca, eps {WHITEN_EPS} x largest eigenvalue"
                      + (", per block, null directions dropped" if cfg.mode == "parts" else ""),
                      "parts": [k * dim for k in PARTS] if cfg.mode == "parts" else None},
        "excluded": {r: {"count": len(ids), "ids": ids} for r, ids in sorted(excluded.items())},
        "subword_only": subword_only, "no_vector": no_vector,
        "token_counts": {t: counts.get(t, 0) for t in tokens[1:]},
        "object_counts": dict(Counter(" ".join(s.placeholders) for s in samples).most_common()),
        "template_counts": dict(Counter(s.template for s in samples).most_common()),
    }
    write_json(out / "vocab.json", info)
    return info


class Vocab:
    """A finished vocab dir: the token table, per-sample conditions, and vectors for any word."""

    def __init__(self, root):
        self.root = Path(root)
        if not (self.root / "vocab.json").exists():
            raise UserError(f"{self.root} is not a finished vocab dir (no vocab.json); run `t2v vocab`")
        name = "vocab.json"
        try:
            self.info = json.loads((self.root / name).read_text())
            name = "embeddings.h5"
            with h5py.File(self.root / name, "r") as f:
                self.tokens = [t.decode() for t in f["tokens"][:]]
                self.vectors = f["vectors"][:]
            name = "samples.h5"
            with h5py.File(self.root / name, "r") as f:
                self.cond_mean, self.cond_whiten = f["cond_mean"][:], f["cond_whiten"][:]
        except (OSError, KeyError, ValueError, TypeError) as e:  # torn, truncated or foreign files
            raise UserError(f"{self.root / name} is unreadable ({type(e).__name__}); rebuild it with `t2v vocab`") from None
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self._ft = None

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def cond_dim(self) -> int:
        return condition_dim(self.dim, self.info["mode"])

    @property
    def parts(self) -> tuple[int, ...] | None:
        """(template, object head, modifiers) dims of a ``parts`` condition, else None."""
        p = self.info["condition"].get("parts")
        return tuple(p) if p else None

    def condition(self, text: str) -> np.ndarray:
        """Any prompt -> the (whitened) condition vector, exactly as training saw its captions.

        The one prompt -> condition path: training's clip grids, ``t2v sample`` and
        ``t2v evaluate`` all come here (through ``conditions``). A prompt that fills a known
        template is split into that template and its placeholder words: ``object`` mode
        conditions on the placeholder words, ``parts`` mode on both parts apart. Other free
        text stands for the placeholder (``object``) or for both parts (``parts``)."""
        toks, vecs = self.encode(text)
        found = match_template(toks, self.info["template_counts"])
        mode = self.info["mode"]
        if mode == "sentence":
            raw = condition_vector(vecs, mode)
        elif mode == "object":  # the placeholder words, as training saw them; all words for free text
            raw = condition_vector(vecs if found is None else self.encode(" ".join(sum(found[1], [])))[1], mode)
        elif found is None:
            raw = parts_vector(vecs, vecs)
        else:
            template = sum(template_words(found[0]), [])  # no literal words: the padding vector, as in training
            raw = parts_vector(self.encode(" ".join(template))[1] if template else np.zeros((1, self.dim), np.float32),
                               self.encode(" ".join(sum(found[1], [])))[1])
        return ((raw - self.cond_mean) @ self.cond_whiten).astype(np.float32)

    def conditions(self, texts) -> np.ndarray:
        """Prompts -> (P, C) conditions; an empty prompt is refused with a clear message."""
        out = []
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise UserError("an empty prompt has nothing to condition on")
            out.append(self.condition(t))  # raises a UserError for text without words
        return np.stack(out)

    def word_vector(self, word: str) -> np.ndarray:
        if word in self.index and self.index[word]:
            return self.vectors[self.index[word]]
        if not self.info["subwords"]:
            raise UserError(f"{word!r} is not in the vocabulary, and these vectors came from a .vec file, "
                            "which has no subword information")
        if self._ft is None:
            self._ft = FastTextBin(self.root / "fasttext.bin", words=set())
        return self._ft.word_vector(word)

    def encode(self, text: str) -> tuple[list[str], np.ndarray]:
        """Any text -> its tokens and their vectors (L,D); unseen words use subwords."""
        toks = tokenize(text)
        if not toks:
            raise UserError(f"{text!r} has no words to condition on")
        return toks, np.stack([self.word_vector(t) for t in toks])

    def neighbors(self, text: str, k: int = 5) -> list[tuple[str, float]]:
        toks, vecs = self.encode(text)
        q = vecs.mean(0)
        table = self.vectors[1:]
        sims = table @ q / (np.linalg.norm(table, axis=1) * np.linalg.norm(q) + 1e-12)
        order = [i for i in np.argsort(-sims) if self.tokens[i + 1] not in toks]
        return [(self.tokens[i + 1], float(sims[i])) for i in order[:k]]
