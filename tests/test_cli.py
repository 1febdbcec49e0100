import dataclasses
from pathlib import Path
from typing import Literal, Optional

import pandas as pd
import pytest

from conftest import t2v
from pipeline.config import override
from pipeline.errors import UserError
from pipeline.manifests import load_subset


@pytest.mark.parametrize("cmd", ["toy-data", "frames", "vocab", "neighbors", "train", "sample",
                                 "evaluate", "submit", "status", "demo"])
def test_every_subcommand_has_help_with_examples(cmd):
    r = t2v(cmd, "--help")
    assert "examples:" in r.stdout and f"t2v {cmd}" in r.stdout


def test_demo_runs_what_exists(tmp_path):
    # A bad --set is one line before any work; a good one reaches the run's frozen config.
    bad = t2v("demo", "--out", tmp_path / "demo", "--set", "d_vid_cond=both", check=False)
    assert bad.returncode == 2 and "d_vid_cond" in bad.stderr and not (tmp_path / "demo").exists()
    for value, needle in (("d_vid_view=3", "d_vid_view must divide size 32"), ("g_ch=0", "g_ch must be >= 1"),
                          ("d_vid_pool=4", "leave at least 16 pixels")):
        bad = t2v("demo", "--out", tmp_path / "demo", "--set", value, check=False)  # a bad value, not a bad type
        assert bad.returncode == 2 and needle in bad.stderr and not (tmp_path / "demo").exists()
    r = t2v("demo", "--out", tmp_path / "demo", "--videos", "60", "--steps", "2", "--evaluator-steps", "20",
            "--min-clips", "1", "--set", "lr_g=0.0004")
    assert __import__("json").loads((tmp_path / "demo/run/config.json").read_text())["lr_g"] == 0.0004
    assert "status counts: ok=" in r.stdout and (tmp_path / "demo/frames/manifest.csv").exists()
    assert "training finished at step 2" in r.stdout and "mlflow ui --backend-store-uri" in r.stdout
    clips = tmp_path / "demo/run/clips"
    assert (clips / "step_000002.gif").exists() and (clips / "step_000002.mp4").exists()
    assert f"training clips  {clips / 'step_000002.gif'}" in r.stdout and (tmp_path / "demo/samples.gif").exists()
    e = __import__("json").loads((tmp_path / "demo/eval.json").read_text())
    assert e["step"] == 2 and e["n_prompts_heldout"] > 0 and "chance" in r.stdout
    assert "per-cell heatmap" in r.stdout and (tmp_path / "demo/run/eval_heatmap.png").exists()
    meta = __import__("json").loads((tmp_path / "demo/toy/toy_meta.json").read_text())
    assert meta["seed"] == 0 and meta["heldout_pairs"] and meta["heldout_objects"] and meta["unreachable"]
    # Another toy seed never lands in a finished demo of seed 0: one line, exit 2, nothing touched.
    again = t2v("demo", "--out", tmp_path / "demo", "--seed", "1", check=False)
    assert again.returncode == 2 and "another toy seed" in again.stderr and "Traceback" not in again.stderr


def test_subset_manifests(toy, tmp_path):
    push = load_subset("sthsth_push_ltr")
    assert push["templates"] == ["Pushing [something] from left to right"]
    with pytest.raises(UserError, match="STHSTH_ROOT"):
        load_subset("sthsth_push_ltr", env={}, resolve_paths=True)
    assert load_subset("sthsth_push_ltr", env={"STHSTH_ROOT": "/d"}, resolve_paths=True)["videos"] == "/d/videos"
    out = tmp_path / "o"
    t2v("frames", "--labels", toy / "labels/train.json", "--videos", toy / "videos", "--out", out,
        "--subset", "sthsth_push_ltr")
    m = pd.read_csv(out / "manifest.csv")
    assert len(m) > 0 and set(m["template"]) == {"Pushing [something] from left to right"}
    r = t2v("frames", "--labels", toy / "labels/train.json", "--videos", toy / "videos", "--out", out,
            "--subset", "sthsth_push_ltr", "--templates", "x", check=False)
    assert r.returncode == 2 and "not both" in r.stderr


@dataclasses.dataclass(frozen=True)
class Cfg:
    lr: float = 1e-3
    steps: int = 10
    amp: bool = False
    mode: Literal["a", "b"] = "a"
    path: Optional[Path] = None
    widths: tuple[int, ...] = (1, 2)


def test_typed_overrides():
    c = override(Cfg(), ["lr=5e-5", "steps=3", "amp=true", "mode=b", "path=/x", "widths=4,8,16"])
    assert c == Cfg(5e-5, 3, True, "b", Path("/x"), (4, 8, 16))
    for bad, msg in (["nope=1"], "unknown key"), (["steps=1.5"], "expected int"), (["mode=c"], "one of"), \
                     (["amp=maybe"], "expected bool"), (["steps"], "key=value"):
        with pytest.raises(UserError, match=msg):
            override(Cfg(), bad)


def test_debug_executor_runs_in_process(toy, tmp_path):
    out = tmp_path / "dbg"
    r = t2v("frames", "--labels", toy / "labels/train.json", "--videos", toy / "videos", "--out", out,
            "--shard-size", "30", "--executor", "debug")
    assert "status counts: ok=" in r.stdout and len(list((out / "shards").glob("*.h5"))) == 2
