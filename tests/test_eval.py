"""Sampling and evaluation on a tiny trained run, through the CLI a user calls.

The only fake here is the I3D network: its weights can't be downloaded on this
machine, so a small scripted 3D conv stands in to check the --i3d plumbing.
"""

import json

import av
import h5py
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import t2v
from pipeline.evaluate import frechet, mean_pairwise
from pipeline.clips import to_uint8
from pipeline.models import render
from pipeline.sample import conditions, load_generator
from pipeline.train import build_config, run

TINY = ["batch=4", "g_ch=4", "d_ch=4", "z_dim=8", "gru_dim=16", "img_frames=1", "tick_every=2", "workers=0"]


@pytest.fixture(scope="module")
def trained(prepared, toy, tmp_path_factory):
    d = tmp_path_factory.mktemp("evalrun")
    cfg = build_config(prepared / "frames", prepared / "vocab", d / "run", "debug_cpu",
                       TINY + ["max_steps=4", "checkpoint_every=2", f"tracking_uri=sqlite:///{d}/mlruns/mlflow.db"])
    r = run(cfg)
    assert r["status"] == "finished"
    # Real clips of the validation split: they hold objects training never saw.
    t2v("frames", "--labels", toy / "labels/validation.json", "--videos", toy / "videos", "--out", d / "val",
        "--shard-size", "64")
    return d


def decode(path):
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.stack(frames)


def test_sample_grid_rows_are_prompts_and_unseen_words_work(trained, tmp_path):
    out = tmp_path / "s.gif"
    r = t2v("sample", "--run-dir", trained / "run", "--text", "pushing red square from left to right",
            "--text", "pushing zorblatt from left to right", "--n", "3", "--out", out)
    assert "2 prompt(s) x 3 sample(s)" in r.stdout
    v = decode(out)
    # 16 frames; 2 rows x 3 columns of 32 px with 1 px gutters, upscaled 4x.
    assert v.shape == (16, (2 * 33 - 1) * 4, (3 * 33 - 1) * 4, 3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["rows"] == ["pushing red square from left to right", "pushing zorblatt from left to right"]
    assert meta["step"] == 4
    t2v("sample", "--run-dir", trained / "run", "--text", "moving red square up", "--out", tmp_path / "dir")
    assert {p.name for p in (tmp_path / "dir").iterdir()} >= {"samples.gif", "samples.mp4"}


def test_sample_h5_holds_the_raw_clips_in_prompt_order(trained, tmp_path):
    texts = ["moving red square up", "pushing blue plank from right to left", "moving zorblatt down"]
    out = tmp_path / "clips.h5"
    t2v("sample", "--run-dir", trained / "run", *sum((["--text", t] for t in texts), []), "--n", "3",
        "--seed", "7", "--out", out)
    with h5py.File(out) as f:
        videos, prompts = f["videos"][:], [p.decode() for p in f["prompts"][:]]
    assert videos.dtype == np.uint8 and videos.shape == (3, 3, 16, 32, 32, 3) and prompts == texts
    # The same clips as the renderer gives for those prompts: nothing is lost on the way out.
    g = load_generator(trained / "run")
    ref = to_uint8(render(g.G, conditions(g.vocab, texts), 3, seed=7))
    assert np.array_equal(videos, ref)


def test_a_training_grid_and_t2v_sample_render_a_prompt_the_same_way(trained):
    from pipeline.labels import fill
    from pipeline.prompts import prompt_conditions

    g = load_generator(trained / "run")
    rows = [("Moving [something] up", "red square", False), ("Pushing [something] from left to right", "blue plank", True)]
    by_train = prompt_conditions(g.config["vocab"], rows)
    by_sample = conditions(g.vocab, [fill(t, [o]) for t, o, _ in rows])
    assert torch.equal(by_train, by_sample)


def test_a_clip_depends_only_on_its_prompt_seed_and_index(trained):
    g = load_generator(trained / "run")
    a = conditions(g.vocab, ["moving red square up"])
    b = conditions(g.vocab, ["pushing digit one from right to left", "moving red square up"])
    x, y = render(g.G, a, 2, seed=5), render(g.G, b, 2, seed=5)
    # Batch size changes only float rounding (oneDNN picks other kernels), nothing systematic.
    assert (x[0] - y[1]).abs().mean() < 1e-4 and (x[0] - y[1]).abs().max() < 0.05
    assert not torch.equal(x[0, 0], x[0, 1])  # different samples differ
    assert not torch.equal(y[0], y[1])  # different prompts differ


@pytest.mark.parametrize("text,msg", [("", "empty prompt"), ("?!...", "no words")])
def test_sample_refuses_prompts_without_words(trained, tmp_path, text, msg):
    r = t2v("sample", "--run-dir", trained / "run", "--text", text, "--out", tmp_path / "x.gif", check=False)
    assert r.returncode == 2 and msg in r.stderr
    assert not (tmp_path / "x.gif").exists()


def test_sample_errors_name_the_missing_checkpoint(trained, tmp_path):
    r = t2v("sample", "--run-dir", trained / "run", "--text", "moving red square up", "--checkpoint", "999",
            "--out", tmp_path / "x.gif", check=False)
    assert r.returncode == 2 and "checkpoint 999 not found" in r.stderr and "step-00000004.pt" in r.stderr
    (tmp_path / "empty").mkdir()
    r = t2v("sample", "--run-dir", tmp_path / "empty", "--text", "a", "--out", tmp_path / "x.gif", check=False)
    assert r.returncode == 2 and "no readable checkpoint" in r.stderr


def test_sample_by_mlflow_run_id(trained, tmp_path):
    run_id = (trained / "run" / "mlflow_run_id").read_text().strip()
    t2v("sample", "--run-id", run_id, "--tracking-uri", f"sqlite:///{trained}/mlruns/mlflow.db",
        "--text", "moving red square up", "--n", "1", "--out", tmp_path / "x.mp4")
    assert decode(tmp_path / "x.mp4").shape[0] == 16


def test_frechet_and_diversity_are_what_they_claim():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet(a, a) == pytest.approx(0, abs=1e-6)
    # Same covariance, means 2 apart along one axis: the distance is |mu1 - mu2|^2 = 4.
    assert frechet(a, a + np.array([2.0, 0, 0])) == pytest.approx(4, abs=1e-6)
    # Isotropic, std 1 vs 2: 3 * (1 + 4 - 2 * 2) = 3 (up to sampling error).
    assert frechet(a, 2 * rng.normal(size=(4000, 3))) == pytest.approx(3, abs=0.3)
    pts = np.array([[0.0, 0], [3, 4]])
    assert mean_pairwise([pts, np.zeros((1, 2))]) == 5.0  # a single sample has no pair and is skipped
    assert mean_pairwise([np.zeros((3, 2))]) == 0.0  # mode collapse reads as 0


@pytest.fixture(scope="module")
def evaluated(trained):
    r = t2v("evaluate", "--run-dir", trained / "run", "--data", _frames(trained), trained / "val",
            "--samples", "2", "--evaluator-steps", "60", "--min-clips", "1", "--cache", trained / "cache")
    return r, json.loads((trained / "run" / "eval.json").read_text())


def _frames(trained):
    return json.loads((trained / "run" / "config.json").read_text())["data"]


def test_evaluate_writes_eval_json_and_a_table(evaluated):
    r, e = evaluated
    for k in ("cond_acc_seen", "cond_acc_heldout", "chance", "frechet", "diversity", "evaluator_real_acc"):
        assert e[k] is not None, k
    assert e["chance"] == pytest.approx(1 / (e["n_templates"] * e["n_objects"]))
    assert e["n_templates"] == 5  # this data keeps the "Showing" distractor beside the four motions
    assert 0 <= e["cond_acc_seen"] <= 1 and e["frechet"] >= 0 and e["diversity"] >= 0
    assert e["step"] == 4 and "NOT I3D-FVD" in e["feature_space"]
    assert "chance" in r.stdout and "NOT I3D-FVD" in r.stdout and "the ceiling" in r.stdout
    kinds = {p["kind"] for p in e["prompts"]}
    # The validation clips bring objects training never had (named by seen words, or by a word
    # training never saw: the unreachable control), and pairs it never had.
    assert {"seen", "new_pair"} <= kinds <= {"seen", "new_pair", "new_object", "unreachable"}
    assert all(0 <= p["acc"] <= 1 for p in e["prompts"])
    for k in ("cond_acc_heldout_pairs", "cond_acc_heldout_objects", "cond_acc_unreachable", "min_cell_acc_heldout"):
        assert k in e
    held = [p["acc"] for p in e["prompts"] if p["kind"] in ("new_pair", "new_object")]
    assert e["min_cell_acc_heldout"] == min(held)
    # The per-cell heatmap: a real PNG beside eval.json, named in the output.
    assert f"per-cell heatmap: {e['heatmap']}" in r.stdout
    from PIL import Image

    assert Image.open(e["heatmap"]).size[0] > 200


def test_evaluate_logs_on_the_runs_own_mlflow_run(trained, evaluated):
    _, e = evaluated
    c = MlflowClient(tracking_uri=f"sqlite:///{trained}/mlruns/mlflow.db")
    run_id = (trained / "run" / "mlflow_run_id").read_text().strip()
    m = c.get_run(run_id).data.metrics
    assert m["cond_acc_seen"] == pytest.approx(e["cond_acc_seen"])
    assert m["frechet"] == pytest.approx(e["frechet"])
    assert [h.step for h in c.get_metric_history(run_id, "chance")] == [4]
    assert "eval/eval.json" in {a.path for a in c.list_artifacts(run_id, "eval")}


def test_the_evaluator_is_trained_once_per_dataset(trained, evaluated):
    _, first = evaluated
    assert first["evaluator_cached"] is False
    t2v("evaluate", "--run-dir", trained / "run", "--data", _frames(trained), trained / "val", "--samples", "2",
        "--evaluator-steps", "60", "--min-clips", "1", "--cache", trained / "cache")
    again = json.loads((trained / "run" / "eval.json").read_text())
    assert again["evaluator_cached"] is True and again["evaluator"] == first["evaluator"]
    assert again["cond_acc_seen"] == first["cond_acc_seen"]  # same evaluator, same seeds
    assert len(list((trained / "cache").glob("evaluator-*.pt"))) == 1


def test_the_evaluator_recognises_real_clips(trained, evaluated):
    """The instrument itself: with its default training length, it names the motion of held-back real clips."""
    from pipeline.evaluate import EvalConfig, train_evaluator

    ev = train_evaluator(EvalConfig(run_dir=trained / "run", data=(_frames(trained), trained / "val"),
                                    min_clips=1, cache=trained / "cache-default"), progress=False)
    assert ev["val_acc"]["template"] >= 0.75  # chance is 0.25


def test_i3d_torchscript_adds_true_fvd(trained, tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3, stride=(2, 8, 8)), torch.nn.AdaptiveAvgPool3d(1),
                              torch.nn.Flatten())
    torch.jit.script(net).save(str(tmp_path / "i3d.pt"))
    r = t2v("evaluate", "--run-dir", trained / "run", "--samples", "2", "--evaluator-steps", "60",
            "--min-clips", "1", "--cache", trained / "cache", "--i3d", tmp_path / "i3d.pt", "--json")
    e = json.loads(r.stdout)
    assert e["fvd_i3d"] >= 0
    r = t2v("evaluate", "--run-dir", trained / "run", "--i3d", tmp_path / "nothing.pt", "--min-clips", "1",
            "--cache", trained / "cache", check=False)
    assert r.returncode == 2 and "TorchScript" in r.stderr


def test_a_checkpoint_of_another_model_version_is_one_clear_line(trained, prepared, tmp_path):
    """A run trained before an architecture change (session 7 conditioned G's last BatchNorm):
    sampling it or resuming it says so in one line, exit code 2, instead of a traceback."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained / "run", old)
    ckpt = old / "checkpoints" / "step-00000004.pt"
    state = torch.load(ckpt, weights_only=True)
    for part in ("G", "G_ema"):  # the older generator's plain BatchNorm in place of the conditional one
        w = {k: v for k, v in state[part].items() if not k.startswith("out_bn.")}
        state[part] = {**w, "out_bn.weight": torch.ones(4), "out_bn.bias": torch.zeros(4)}
    torch.save(state, ckpt)
    r = t2v("sample", "--run-dir", old, "--text", "moving red square up", "--out", tmp_path / "x.gif", check=False)
    assert r.returncode == 2 and "another model version" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x.gif").exists()
    cfg = json.loads((old / "config.json").read_text())
    sets = sum((["--set", s] for s in TINY + ["checkpoint_every=2"]), [])
    r = t2v("train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", old,
            "--preset", "debug_cpu", "--max-steps", "6", *sets, "--tracking-uri", cfg["tracking_uri"], check=False)
    assert r.returncode == 2 and "another model version" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert ckpt.exists() and not (old / "checkpoints" / "step-00000006.pt").exists()  # nothing lost or written


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here")])])
def test_evaluator_features_come_back_as_numpy_from_any_device(device):
    # The Frechet distance and the diversity take NumPy: on CUDA, `.numpy()` of the features raised,
    # so every in-training evaluation on a GPU failed (found on session 22's GPU machine).
    from pipeline.evaluate import Evaluator, features

    model = Evaluator(3, 4).to(device)
    f = features(model, torch.zeros(2, 3, 16, 32, 32, device=device))
    assert isinstance(f, np.ndarray) and f.shape[0] == 2 and f.dtype == np.float64
