import json
import subprocess

import numpy as np
import pytest

from pipeline.decode import decode
from pipeline.labels import SLOT, fill, read_labels
from pipeline.toydata import COLOURS, SHAPES, TEMPLATES, heldout_sets, make_toy


def ffprobe(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
                          "-show_entries", "stream=codec_name,width,height,r_frame_rate,nb_read_frames",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"][0]


def test_format_matches_something_something(toy):
    train = json.loads((toy / "labels" / "train.json").read_text())
    val = json.loads((toy / "labels" / "validation.json").read_text())
    assert len(train) + len(val) == 48 and len(val) >= 2
    for row in train + val:
        assert set(row) == {"id", "label", "template", "placeholders"}
        assert SLOT in row["template"] and len(row["placeholders"]) == 1
        assert row["label"].lower() == fill(row["template"], row["placeholders"]).lower()
        assert (toy / "videos" / f"{row['id']}.webm").is_file()
    for row in train[:6]:
        s = ffprobe(toy / "videos" / f"{row['id']}.webm")
        assert s["codec_name"] == "vp9" and s["r_frame_rate"] == "12/1"
        assert 96 <= s["height"] <= 240 and s["width"] > s["height"]
        assert 24 <= int(s["nb_read_frames"]) <= 60  # 2-5 s at 12 fps


def test_heldout_prompts_never_in_train(toy):
    meta = json.loads((toy / "toy_meta.json").read_text())
    assert set(meta) >= {"objects", "templates", "heldout_pairs", "heldout_objects", "unreachable"}
    held = {tuple(p) for p in meta["heldout_pairs"]}
    never = set(meta["heldout_objects"]) | set(meta["unreachable"])
    train = read_labels(toy / "labels" / "train.json")
    for s in train:
        assert (s.placeholders[0], s.template) not in held
        assert s.placeholders[0] not in never
    val = read_labels(toy / "labels" / "validation.json")
    assert any((s.placeholders[0], s.template) in held or s.placeholders[0] in never for s in val)


@pytest.mark.parametrize("seed", range(6))
def test_each_seed_draws_its_own_heldout_cells_of_three_kinds(seed):
    h = heldout_sets(seed)
    assert h != heldout_sets(seed + 1)
    # Held-out compositions: never in train, but their colour and shape each are, with other partners.
    for obj in h["heldout_objects"]:
        colour, shape = obj.split()
        assert colour in COLOURS and shape in SHAPES
        others = [o for o in h["heldout_objects"] if o != obj]
        assert any(f"{colour} {s}" not in h["heldout_objects"] for s in SHAPES if s != shape)
        assert any(f"{c} {shape}" not in h["heldout_objects"] for c in COLOURS if c != colour)
        assert obj not in others
    # The control is a digit, whose glyph no name can give away; pairs are seen objects.
    assert all(u.startswith("digit ") for u in h["unreachable"])
    never = set(h["heldout_objects"]) | set(h["unreachable"])
    assert all(o not in never for o, _ in h["heldout_pairs"])
    assert len({o for o, _ in h["heldout_pairs"]}) == len(h["heldout_pairs"])


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = (make_toy(tmp_path / n, videos=6, seed=s, progress=False) for n, s in
               (("a", 1), ("b", 1), ("c", 2)))
    la = (tmp_path / "a/labels/train.json").read_text()
    assert la == (tmp_path / "b/labels/train.json").read_text()
    assert la != (tmp_path / "c/labels/train.json").read_text()
    vid = json.loads(la)[0]["id"]
    fa = decode(tmp_path / "a/videos" / f"{vid}.webm", 32)
    fb = decode(tmp_path / "b/videos" / f"{vid}.webm", 32)
    assert np.array_equal(fa, fb)
