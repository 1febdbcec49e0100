"""The vocab stage with real fastText training (no fakes)."""

import json

import fasttext
import h5py
import numpy as np
import pytest

from conftest import t2v
from pipeline.fasttext_bin import FastTextBin
from pipeline.text import tokenize
from pipeline.toydata import DIGITS
from pipeline.vocab import Vocab


@pytest.fixture(scope="module")
def vocab(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab")
    t2v("vocab", "--labels", toy / "labels/train.json", toy / "labels/validation.json", "--out", out)
    return out


def _read(out):
    with h5py.File(out / "embeddings.h5", "r") as e, h5py.File(out / "samples.h5", "r") as s:
        return ([t.decode() for t in e["tokens"][:]], e["vectors"][:],
                {k: s[k][:] for k in ("ids", "token_ids", "lengths", "condition", "cond_mean", "cond_whiten")})


def test_outputs_have_the_right_shapes(vocab, toy):
    tokens, vectors, samples = _read(vocab)
    labels = sum((json.loads((toy / f"labels/{s}.json").read_text()) for s in ("train", "validation")), [])
    assert tokens[0] == "<pad>" and not vectors[0].any()
    assert vectors.dtype == np.float32 and vectors.shape == (len(tokens), 50)
    assert {"square", "digit", "pushing", "left"} <= set(tokens)
    assert set(DIGITS) & set(tokens)  # the toy world's digit names (zero, one, four, seven)
    assert [i.decode() for i in samples["ids"]] == [r["id"] for r in labels]
    ti, n = samples["token_ids"], samples["lengths"]
    assert samples["condition"].dtype == np.float32 and samples["condition"].shape == (len(labels), 50)
    for row, ids, k, cond in zip(labels, ti, n, samples["condition"]):
        assert [tokens[i] for i in ids[:k]] == tokenize(row["placeholders"][0]) and not ids[k:].any()
        raw = vectors[ids[:k]].mean(0)  # object mode: the mean of the word vectors, then whitened
        np.testing.assert_allclose(cond, (raw - samples["cond_mean"]) @ samples["cond_whiten"], rtol=1e-4,
                                   atol=1e-5)
    info = json.loads((vocab / "vocab.json").read_text())
    assert info["n_samples"] == len(labels) and info["excluded"] == {}
    assert info["token_counts"]["digit"] == sum("digit" in r["label"] for r in labels)
    assert (vocab / "fasttext.bin").stat().st_size > 0


def test_same_input_same_vectors(vocab, toy, tmp_path):
    t2v("vocab", "--labels", toy / "labels/train.json", toy / "labels/validation.json", "--out", tmp_path / "b")
    a, b = _read(vocab), _read(tmp_path / "b")
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    assert np.array_equal(a[2]["condition"], b[2]["condition"])


@pytest.mark.parametrize("word,base", [("squares", "square"), ("pillars", "pillar"), ("digits", "digit"),
                                       ("pillarr", "pillar"), ("squarre", "square")])
def test_unseen_words_get_subword_vectors(vocab, word, base):
    v = Vocab(vocab)
    assert word not in v.index and np.abs(v.word_vector(word)).sum() > 0
    r = t2v("neighbors", "--vocab", vocab, word, "-k", "3")
    assert "subword" in r.stdout and r.stdout.splitlines()[1].split()[-1] == base


def test_streaming_reader_matches_fasttext_exactly(vocab):
    model = fasttext.load_model(str(vocab / "fasttext.bin"))
    reader = FastTextBin(vocab / "fasttext.bin")
    for w in model.get_words()[:20] + ["squares", "penny", "ünïcode-word", "x"]:
        assert np.array_equal(model.get_word_vector(w), reader.word_vector(w)), w


def test_pretrained_bin_is_linked_and_gives_the_same_vectors(vocab, toy, tmp_path):
    out = tmp_path / "pre"
    t2v("vocab", "--labels", toy / "labels/train.json", toy / "labels/validation.json", "--out", out,
        "--pretrained", vocab / "fasttext.bin", "--dim", "50")
    assert (out / "fasttext.bin").is_symlink()
    a, b = _read(vocab), _read(out)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    assert json.loads((out / "vocab.json").read_text())["source"] == "pretrained-bin"


def test_vec_file_is_the_whole_vocabulary(toy, tmp_path):
    words = {"red": 1.0, "square": 2.0, "digit": 3.0, "seven": 4.0}
    vec = tmp_path / "tiny.vec"
    vec.write_text(f"{len(words)} 4\n" + "".join(f"{w} {v} 0 0 {-v}\n" for w, v in words.items()))
    out = tmp_path / "v"
    r = t2v("vocab", "--labels", toy / "labels/train.json", "--out", out, "--pretrained", vec)
    tokens, vectors, samples = _read(out)
    assert set(tokens[1:]) == set(words) and vectors.shape == (len(tokens), 4)
    assert vectors[tokens.index("square")].tolist() == [2.0, 0, 0, -2.0]
    info = json.loads((out / "vocab.json").read_text())
    assert "pushing" in info["no_vector"] and "no vector" in r.stderr
    excluded = info["excluded"]["all_tokens_oov"]["count"]  # e.g. "blue circle": no word has a vector
    assert excluded > 0 and info["n_samples"] + excluded == info["n_labels"]
    assert not (out / "fasttext.bin").exists()


def _one_line_error(r, text):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], r.stderr


def test_bad_inputs(toy, tmp_path):
    rows = json.loads((toy / "labels/train.json").read_text())
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    _one_line_error(t2v("vocab", "--labels", empty, "--out", tmp_path / "o", check=False), "no samples")
    nop = tmp_path / "nop.json"
    nop.write_text(json.dumps(rows[:3] + [{"id": "1", "label": "pushing from left to right",
                                           "template": "Pushing [something] from left to right"}]))
    _one_line_error(t2v("vocab", "--labels", nop, "--out", tmp_path / "o", check=False),
                    "sample 1 has no placeholders")
    t2v("vocab", "--labels", nop, "--out", tmp_path / "skip", "--skip-bad")
    info = json.loads((tmp_path / "skip/vocab.json").read_text())
    assert info["excluded"] == {"no_placeholders": {"count": 1, "ids": ["1"]}} and info["n_samples"] == 3
    binary = tmp_path / "latin1.json"
    binary.write_bytes(json.dumps(rows[:2]).encode().replace(b"digit", b"d\xefgit"))
    _one_line_error(t2v("vocab", "--labels", binary, "--out", tmp_path / "o", check=False), "not UTF-8")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    _one_line_error(t2v("vocab", "--labels", toy / "labels/train.json", "--out", tmp_path / "o",
                        "--pretrained", junk, check=False), "neither a fastText .bin model nor a .vec")
    vec = tmp_path / "d4.vec"
    vec.write_text("1 4\nsquare 1 2 3 4\n")
    _one_line_error(t2v("vocab", "--labels", toy / "labels/train.json", "--out", tmp_path / "o",
                        "--pretrained", vec, "--dim", "50", check=False), "--dim 50 does not match")


def test_dry_run_slurm_is_a_single_job(toy, tmp_path):
    r = t2v("vocab", "--labels", toy / "labels/train.json", "--out", tmp_path / "o", "--executor", "slurm",
            "--dry-run")
    assert "#SBATCH" in r.stdout and "--array" not in r.stdout and not (tmp_path / "o").exists()


def test_tokenize():
    assert tokenize("Pushing a T-shirt, someone’s mug (blue) from LEFT to right.") == \
        ["pushing", "a", "t-shirt", "someone's", "mug", "blue", "from", "left", "to", "right"]
    assert tokenize("...!") == []


def test_conditions_are_whitened_means_of_word_vectors(vocab):
    """What the generator is conditioned on (object mode): the whitened mean of the words' vectors."""
    v = Vocab(vocab)
    with h5py.File(vocab / "samples.h5", "r") as f:
        ids, lengths, cond = f["token_ids"][:8], f["lengths"][:8], f["condition"][:8]
    mean = np.stack([v.vectors[i[:n]].mean(0) for i, n in zip(ids, lengths)])
    np.testing.assert_allclose((mean - v.cond_mean) @ v.cond_whiten, cond, rtol=1e-4, atol=1e-5)
    _, new = v.encode("pushing a penny")  # unseen word, still a vector
    assert new.shape == (3, v.dim) and np.abs(new[2]).sum() > 0


def test_sentence_mode_with_extra_corpus(toy, tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("A penny is a small coin.\nPushing a coin from left to right.\n")
    out = tmp_path / "sent"
    t2v("vocab", "--labels", toy / "labels/train.json", "--out", out, "--mode", "sentence", "--dim", "16",
        "--corpus", extra, "--epoch", "5")
    tokens, vectors, samples = _read(out)
    rows = json.loads((toy / "labels/train.json").read_text())
    first = [tokens[i] for i in samples["token_ids"][0][: samples["lengths"][0]]]
    assert first == tokenize(rows[0]["label"]) and vectors.shape[1] == 16
    assert "penny" in (out / "corpus.txt").read_text()
    assert json.loads((out / "vocab.json").read_text())["mode"] == "sentence"


def test_sentence_conditions_tell_directions_apart_and_are_whitened(toy, tmp_path):
    """A mean of word vectors can't tell "left to right" from "right to left"; ours can."""
    from pipeline.vocab import Vocab

    t2v("vocab", "--labels", toy / "labels/train.json", toy / "labels/validation.json", "--out", tmp_path / "v",
        "--mode", "sentence", "--epoch", "5")
    v = Vocab(tmp_path / "v")
    assert v.cond_dim == 2 * v.dim
    ltr = v.condition("pushing red square from left to right")
    rtl = v.condition("pushing red square from right to left")
    _, a = v.encode("pushing red square from left to right")
    _, b = v.encode("pushing red square from right to left")
    np.testing.assert_allclose(a.mean(0), b.mean(0), rtol=1e-6)  # same words, same mean
    assert np.linalg.norm(ltr - rtl) > 0.1 * np.linalg.norm(ltr)
    with h5py.File(tmp_path / "v/samples.h5") as f:
        c = f["condition"][:]
    np.testing.assert_allclose(c.mean(0), 0, atol=1e-4)  # whitened: centred ...
    assert np.linalg.eigvalsh(np.cov(c, rowvar=False)).max() < 1.5  # ... and no direction dominates
