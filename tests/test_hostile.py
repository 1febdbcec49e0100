"""Hostile inputs (issue 14): each attack gets one clear line and exit code 2, never a traceback,
or, where the old behaviour was silent corruption, the correct result. Numbers follow the issue."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

from conftest import free_port, t2v
from pipeline import rundir
from pipeline.errors import UserError
from test_submit import spec_for
from test_train import TINY, cfg as train_cfg


def refused(r, *needles):
    """Exit 2, exactly one error line (containing the needles), no traceback."""
    err = r.stderr
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert r.returncode == 2 and "Traceback" not in err and len(lines) == 1, (r.returncode, err)
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def labels_with(toy, tmp_path, **change) -> Path:
    rows = json.loads((toy / "labels/train.json").read_text())
    rows[0].update(change)
    p = tmp_path / "labels.json"
    p.write_text(json.dumps(rows))
    return p


def frames(toy, labels, out, *extra, **kw):
    return t2v("frames", "--labels", labels, "--videos", toy / "videos", "--out", out, *extra, **kw)


def train_args(prepared, run_dir, *extra):
    sets = sum((["--set", s] for s in TINY), [])
    return ["train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", run_dir,
            "--preset", "debug_cpu", "--max-steps", "2", *sets, *extra]


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """A two-step run with a checkpoint per step."""
    from pipeline.train import run

    run_dir = tmp_path_factory.mktemp("hostile") / "run"
    assert run(train_cfg(prepared, run_dir, 2, "checkpoint_every=1"))["status"] == "finished"
    return run_dir


# 1, 8, 10 (labels) -------------------------------------------------------------------------------

@pytest.mark.parametrize("change, needle", [
    ({"placeholders": "red square"}, "'placeholders' must be a list of strings"),
    ({"placeholders": ["red", 7]}, "'placeholders' must be a list of strings"),
    ({"id": "../secret/evil"}, "is not a plain file name"),
    ({"id": "/etc/passwd"}, "is not a plain file name"),
    ({"id": "*"}, "is not a plain file name"),
    ({"id": {"a": 1}}, "id must be a string"),
])
def test_bad_label_entries_are_refused_by_frames_and_vocab(toy, tmp_path, change, needle):
    labels = labels_with(toy, tmp_path, **change)
    refused(frames(toy, labels, tmp_path / "f", check=False), needle)
    if change in ({"placeholders": "red square"}, {"id": "../secret/evil"}):  # the same reader: two suffice
        refused(t2v("vocab", "--labels", labels, "--out", tmp_path / "v", check=False), needle)
    assert not (tmp_path / "f").exists() and not (tmp_path / "v").exists()


def test_a_labels_file_nested_100000_deep_is_one_line(toy, tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    refused(frames(toy, p, tmp_path / "f", check=False), "nests too deeply")


# 2 -----------------------------------------------------------------------------------------------

def test_a_shard_replaced_after_the_manifest_is_refused(toy, prepared, tmp_path):
    out = tmp_path / "f"
    frames(toy, toy / "labels/train.json", out, "--shard-size", "12")
    shutil.copyfile(out / "shards/shard-00001.h5", out / "shards/shard-00002.h5")
    args = train_args(prepared, tmp_path / "run")
    args[args.index("--data") + 1] = out
    refused(t2v(*args, "--dry-run", check=False), "shard-00002.h5 does not hold the clips")


# 3 -----------------------------------------------------------------------------------------------

def test_a_second_training_run_on_a_busy_run_dir_is_refused_naming_the_holder(prepared, tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.rundir import RunLock; "
                               f"lock = RunLock({str(run_dir)!r}); assert lock.acquire() is None; print('held', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = t2v(*train_args(prepared, run_dir), "--dry-run", check=False)
        refused(r, "in use by another training run", f"host {socket.gethostname()}, pid {holder.pid}")
        with pytest.raises(UserError, match="in use by another training run"):  # in the job too (a race)
            from pipeline.train import run

            run(train_cfg(prepared, run_dir, 2))
    finally:
        holder.send_signal(signal.SIGKILL)  # a holder that dies without cleaning up
        holder.wait()
    assert rundir.holder(run_dir) is None  # the kernel released it
    assert rundir.RunLock(run_dir).acquire() is None


def test_without_file_locks_a_dead_holder_line_is_stale(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"{socket.gethostname()} {dead.pid} -\n")
    assert rundir._stale(tmp_path / ".lock")
    (tmp_path / ".lock").write_text(f"{socket.gethostname()} {os.getpid()} -\n")
    assert not rundir._stale(tmp_path / ".lock")


# 4 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, needle", [("lr_g=-1", "lr_g must be > 0"), ("batch=4096", "too few for a batch"),
                                         ("beta1=1.5", "beta1 must be in [0, 1)"),
                                         ("g_frame_blocks=4", "g_frame_blocks must be 0..3"),
                                         ("d_neg_weight=0", "d_neg_weight must be > 0"),
                                         ("match_weight=-1", "match_weight must be >= 0")])
def test_a_run_refused_by_validation_writes_nothing_and_the_rerun_is_accepted(prepared, tmp_path, bad, needle):
    run_dir = tmp_path / "run"
    refused(t2v(*train_args(prepared, run_dir, "--set", bad), check=False), needle)
    assert not (run_dir / "config.json").exists()
    from pipeline.train import build_config, check

    with pytest.raises(UserError, match=needle.split(" must")[0]):  # the job checks the same before writing
        check(build_config(prepared / "frames", prepared / "vocab", run_dir, "debug_cpu", TINY + [bad]))
    # A run dir with a config but no checkpoint (a run that died before its first) takes a new config.
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"lr_g": 123.0}))
    r = t2v(*train_args(prepared, run_dir), "--dry-run")
    assert "new run" in r.stdout


# 5 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stages", ["frame,vocab", "bogus", ""])
def test_unknown_stage_names_are_an_error(toy, tmp_path, stages):
    refused(t2v("submit", spec_for(toy, tmp_path), "--stages", stages, "--dry-run", check=False), "--stages")


# 6, 11 (torn checkpoints, killed writes) ---------------------------------------------------------

def test_a_torn_newest_checkpoint_is_not_done_and_not_named_as_the_resume_point(prepared, trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["run_dir"] = str(run_dir)
    (run_dir / "config.json").write_text(json.dumps(cfg))
    newest = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # torn
    r = t2v("status", run_dir, check=False)
    assert "not done" in r.stdout and "to resume it" in r.stdout, r.stdout
    r = t2v(*train_args(prepared, run_dir), "--dry-run")
    assert "resuming from step-00000001.pt" in r.stdout, r.stdout


def test_a_checkpoint_temporary_left_by_a_killed_writer_is_removed(trained, tmp_path):
    from pipeline.checkpoints import load_latest, save_checkpoint

    d = tmp_path / "run" / "checkpoints"
    d.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = d / f".step-00000005.pt.tmp-{socket.gethostname()}-{dead.pid}"
    left.write_bytes(b"")
    live = d / f".step-00000005.pt.tmp-{socket.gethostname()}-{os.getppid()}"  # a live writer's
    live.write_bytes(b"")
    save_checkpoint(tmp_path / "run", 6, load_latest(trained), keep=3)
    assert not left.exists() and live.exists()


# 7 -----------------------------------------------------------------------------------------------

def test_a_changed_caption_reaches_the_manifest_of_a_finished_output(toy, tmp_path):
    out = tmp_path / "f"
    frames(toy, toy / "labels/train.json", out)
    rows = json.loads((toy / "labels/train.json").read_text())
    rows[0]["label"] = "Pushing a brand new caption from left to right"
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(rows))
    shards = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.h5")}
    r = frames(toy, labels, out)
    assert "0 to do" in r.stdout
    df = pd.read_csv(out / "manifest.csv", dtype=str)
    assert df.loc[df["id"] == str(rows[0]["id"]), "label"].item() == rows[0]["label"]
    assert shards == {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.h5")}  # pixels kept


# 9 -----------------------------------------------------------------------------------------------

def test_frames_keeps_the_temporaries_of_a_live_writer(toy, tmp_path):
    out = tmp_path / "f"
    (out / "shards").mkdir(parents=True)
    live = out / "shards" / f".shard-00000.h5.tmp-{socket.gethostname()}-{os.getppid()}"  # files.temp_path
    live.write_bytes(b"in flight")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / "shards" / f".shard-00000.h5.tmp-{socket.gethostname()}-{dead.pid}"
    stale.write_bytes(b"")
    frames(toy, toy / "labels/train.json", out)
    assert live.read_bytes() == b"in flight" and not stale.exists()


# 10 ----------------------------------------------------------------------------------------------

def test_an_out_that_cannot_take_files_is_one_line(toy, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    refused(frames(toy, toy / "labels/train.json", f, check=False), "is a file")
    refused(t2v("vocab", "--labels", toy / "labels/train.json", "--out", f, check=False), "is a file")
    refused(t2v("toy-data", f, "--videos", "4", check=False), "is a file")
    refused(t2v("toy-data", "/proc/t2v-nope", "--videos", "4", check=False), "cannot be written")
    if os.path.exists("/dev/full"):  # the disk full: every write fails with ENOSPC
        refused(t2v("toy-data", "/dev/full/x", "--videos", "4", check=False))


def test_sample_takes_an_upper_case_extension_and_refuses_non_checkpoints(trained, tmp_path):
    r = t2v("sample", "--run-dir", trained, "--text", "moving red square up", "--n", "1", "--out",
            tmp_path / "grid.GIF")
    assert (tmp_path / "grid.GIF").read_bytes()[:6] in (b"GIF89a", b"GIF87a"), r.stderr
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    for ck in (junk, tmp_path):
        refused(t2v("sample", "--run-dir", trained, "--text", "x square", "--checkpoint", ck, "--out",
                    tmp_path / "s.gif", check=False))
    assert not (tmp_path / "s.gif").exists()


@pytest.mark.parametrize("name", ["samples.h5", "embeddings.h5", "vocab.json"])
def test_corrupt_vocab_files_are_one_line(prepared, tmp_path, name):
    v = tmp_path / "vocab"
    shutil.copytree(prepared / "vocab", v)
    (v / name).write_bytes((v / name).read_bytes()[:64])
    refused(t2v("neighbors", "--vocab", v, "square", check=False), name)
    refused(t2v("train", "--data", prepared / "frames", "--vocab", v, "--run-dir", tmp_path / "r", "--dry-run",
                check=False), name)


def test_a_corrupt_cached_evaluator_is_trained_again(prepared, trained, tmp_path):
    from pipeline.evaluate import EvalConfig, _data_hash, train_evaluator

    ecfg = EvalConfig(run_dir=trained, data=(prepared / "frames",), cache=tmp_path, steps=2, min_clips=1)
    path = tmp_path / f"evaluator-{_data_hash(ecfg)}.pt"
    path.write_bytes(b"garbage")
    ev = train_evaluator(ecfg, progress=False)
    assert not ev["cached"] and train_evaluator(ecfg, progress=False)["cached"]


def test_evaluator_steps_0_is_one_line(trained, tmp_path):
    refused(t2v("evaluate", "--run-dir", trained, "--evaluator-steps", "0", check=False), "--evaluator-steps")
    refused(t2v("demo", "--out", tmp_path / "d", "--evaluator-steps", "0", check=False), "--evaluator-steps")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s["stages"]["frames"].update(frame=16), "stages.frames: unknown key(s) ['frame']"),
    (lambda s: s["resources"]["frames"].update(timeout_min="abc"), "resources.frames.timeout_min: expected int"),
    (lambda s: s["stages"]["vocab"].update(epoch="many"), "stages.vocab.epoch: expected int"),
    (lambda s: s["stages"]["evaluate"].update(samples=[1]), "stages.evaluate.samples: expected int"),
    (lambda s: s["resources"].update(trian={}), "resources for unknown stage(s) ['trian']"),
    (lambda s: s.update(outt="x"), "unknown key(s) ['outt']"),
    (lambda s: s.update(stages=["frames"]), "'stages' must be a mapping"),
])
def test_spec_keys_and_types_are_checked(toy, tmp_path, edit, needle):
    p = spec_for(toy, tmp_path)
    spec = yaml.safe_load(p.read_text())
    edit(spec)
    p.write_text(yaml.safe_dump(spec))
    refused(t2v("submit", p, "--dry-run", check=False), needle)


# 11 (smaller ones) -------------------------------------------------------------------------------

def test_neighbors_k_and_vocab_epoch_and_a_missing_corpus_are_refused_before_work(toy, prepared, tmp_path):
    refused(t2v("neighbors", "--vocab", prepared / "vocab", "square", "-k", "-2", check=False), "-k must be >= 1")
    refused(t2v("vocab", "--labels", toy / "labels/train.json", "--out", tmp_path / "v", "--epoch", "0",
                check=False), "--epoch must be >= 1")
    refused(t2v("vocab", "--labels", toy / "labels/train.json", "--out", tmp_path / "v", "--corpus",
                tmp_path / "missing.txt", check=False), "--corpus file not found")
    assert not (tmp_path / "v").exists()  # nothing submitted, nothing written


def test_a_dead_http_tracking_uri_is_named_and_given_up_on_in_seconds(tmp_path):
    from pipeline.tracking import prepare_store

    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.time()
    with pytest.raises(UserError, match=f"no MLflow server answers at {uri}"):
        prepare_store(uri, "x")
    assert time.time() - t0 < 15


# Section 3: the bar that follows a job's log ------------------------------------------------------

def test_the_progress_bar_follows_a_training_log_as_it_grows(tmp_path):
    import io

    from jobs.progress import LogProgress

    log = tmp_path / "5_0_log.err"
    log.write_text("step 9/10 loss_G=9 loss_D=9 sec_per_step=9\n")  # an earlier attempt's line: old news
    out = io.StringIO()
    with LogProgress(log, "train", poll_s=0.05, file=out) as p:
        with open(log, "a") as f:
            f.write("step 2/10 loss_G=1.5 loss_D=0.25 sec_per_step=3.0\n")
            f.write("evaluator:  50%|#####     | 200/400 [00:01<00:01]\r")
            f.write("step 4/10 loss_G=1.25 loss_D=0.5 sec_per_step=2.0\n")
        time.sleep(0.3)
        assert p.bar.n == 4 and p.bar.total == 10
    text = out.getvalue()
    assert "2/10" in text and "3.00 s/step, ETA 00:24, loss_G=1.500, loss_D=0.250" in text
    assert "train (evaluator)" in text and "200/400" in text
    assert "4/10" in text and "ETA 00:12" in text and "9/10" not in text
