"""`t2v submit`: experiment specs run in order locally and chained on SLURM."""

import re
import shutil
import subprocess
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import sacct, t2v, wait_done
from test_train import TINY

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def spec_for(toy, tmp_path, shard_size=16, **train):
    spec = yaml.safe_load((ROOT / "jobs/toy.yaml").read_text())
    spec["vars"] = {"DATA": str(toy)}
    spec["out"] = str(tmp_path / "exp")
    spec["stages"]["frames"]["shard_size"] = shard_size
    spec["stages"]["vocab"]["epoch"] = 5
    spec["stages"]["train"] = {"preset": "debug_cpu", "max_steps": 3, "set": TINY, **train}
    spec["stages"]["evaluate"] = {"samples": 2, "steps": 40, "min_clips": 1}
    spec["tracking"] = {"experiment": "submit-test", "uri": f"sqlite:///{tmp_path}/mlruns/mlflow.db"}
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_checked_in_specs_dry_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = t2v("submit", ROOT / "jobs/toy.yaml", "--executor", "slurm", "--dry-run")
    assert r.stdout.count("#!/bin/bash") == 5 and "--dependency='afterok:<frames job id>'" in r.stdout
    assert r.stdout.count("#SBATCH --kill-on-invalid-dep=yes") == 3  # never stuck behind a failure
    # The MLflow writers start once the submission's own server job has started.
    assert "#SBATCH --job-name=t2v-toy-mlflow" in r.stdout
    assert r.stdout.count("--dependency='afterok:<vocab job id>,after:<MLflow server job id>'") == 1
    assert "frames\n  -> vocab after frames\n  -> train after vocab\n  -> evaluate after train" in r.stdout
    r = t2v("submit", ROOT / "jobs/sthsth_push_ltr.yaml", "--executor", "slurm", "--dry-run", check=False,
            env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "STHSTH_ROOT" in r.stderr  # the user's paths are required, clearly
    r = t2v("submit", ROOT / "jobs/sthsth_push_ltr.yaml", "--executor", "slurm", "--dry-run",
            env={"PATH": "/usr/bin:/bin", "STHSTH_ROOT": str(tmp_path)})
    assert "#SBATCH --gpus-per-node=4" in r.stdout and "#SBATCH --partition=gpu" in r.stdout


def test_local_chain_runs_in_order(toy, tmp_path):
    r = t2v("submit", spec_for(toy, tmp_path))
    assert re.search(r"frames job \d+\n  -> vocab job \d+\n  -> train job \d+\n  -> evaluate job \d+", r.stdout), \
        r.stdout
    out = tmp_path / "exp"
    assert (out / "frames/manifest.csv").exists() and (out / "vocab/vocab.json").exists()
    assert (out / "run/generator.pt").exists() and (out / "run/eval.json").exists()


@pytest.mark.slurm
def _motion_shards(toy, size: int) -> int:
    """Shards of `size` the spec's frames stage makes: the toy set's train clips of the four motions."""
    rows = __import__("json").loads((toy / "labels/train.json").read_text())
    return -(-sum("Showing" not in r["template"] for r in rows) // size)


def test_slurm_chain_frames_vocab_train_evaluate(slurm, toy, tmp_path):
    """More shards than the test cluster's MaxArraySize of 8: two frames arrays; vocab waits for both."""
    shards = _motion_shards(toy, 3)
    assert 8 < shards <= 16
    r = t2v("submit", spec_for(toy, tmp_path, shard_size=3), "--executor", "slurm")
    last_job = re.search(r"evaluate job (\d+)", r.stdout)[1]  # the chain's end
    frames_job = re.search(r"frames jobs (\d+,\d+)\n", r.stdout)[1]
    vocab_job = re.search(r"vocab job (\d+)", r.stdout)[1]
    vocab_script = next((tmp_path / "exp/logs/vocab").glob(f"{vocab_job}_submission.sh")).read_text()
    assert f"#SBATCH --dependency=afterok:{frames_job.replace(',', ':')}" in vocab_script
    deadline = time.time() + 300
    while time.time() < deadline:
        rows = sacct(last_job)
        if rows and rows[-1]["state"] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            break
        time.sleep(2)
    assert rows[-1]["state"] == "COMPLETED", (rows, sacct(frames_job), sacct(vocab_job))
    assert len(sacct(frames_job)) == shards
    assert all(row["state"] == "COMPLETED" for row in sacct(frames_job) + sacct(vocab_job))
    s = t2v("status", tmp_path / "exp.yaml").stdout  # both arrays' tasks counted
    assert re.search(rf"frames\s+done .*jobs {frames_job} \(slurm\): COMPLETED={shards}", s), s
    run_id = (tmp_path / "exp/run/mlflow_run_id").read_text().strip()
    c = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert [m.step for m in c.get_metric_history(run_id, "loss_G")] == [1, 2, 3]
    assert {a.path for a in c.list_artifacts(run_id, "clips")} >= {"clips/step_000003.gif", "clips/step_000003.mp4"}
    assert c.list_artifacts(run_id, "checkpoints")
    e = __import__("json").loads((tmp_path / "exp/run/eval.json").read_text())
    assert c.get_run(run_id).data.metrics["cond_acc_seen"] == pytest.approx(e["cond_acc_seen"])
    # Training logged through the chain's own MLflow server job (a node's name in its URI), which
    # the writers started after and which stops once the chain is over.
    server_job = re.search(r"MLflow server for this submission: job (\d+)", r.stderr)[1]
    train_script = next((tmp_path / "exp/logs/train").glob("*_submission.sh")).read_text()
    assert re.search(rf"#SBATCH --dependency=afterok:{vocab_job},after:{server_job}\n", train_script), train_script
    assert re.fullmatch(r"http://n[12]:\d+", c.get_run(run_id).data.tags["t2v.tracking"])
    assert wait_done(server_job, timeout=120)[-1]["state"] == "COMPLETED"
    assert "tracking" in t2v("status", tmp_path / "exp.yaml").stdout


@pytest.mark.slurm
def test_status_names_the_failure_and_the_resubmit_command(slurm, toy, tmp_path):
    spec = spec_for(toy, tmp_path)
    doc = yaml.safe_load(spec.read_text())
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\0" * 64)  # not fastText: vocab fails inside its job
    doc["stages"]["vocab"]["pretrained"] = str(junk)
    doc["stages"]["vocab"].pop("epoch")
    spec.write_text(yaml.safe_dump(doc))
    r = t2v("submit", spec, "--executor", "slurm")
    vocab_job = re.search(r"vocab job (\d+)", r.stdout)[1]
    train_job = re.search(r"train job (\d+)", r.stdout)[1]
    eval_job = re.search(r"evaluate job (\d+)", r.stdout)[1]
    try:
        assert wait_ended(train_job)["state"].startswith("CANCELLED")  # not PENDING for ever
        s = t2v("status", spec, check=False)
        assert s.returncode == 1
        assert re.search(r"frames\s+done .*COMPLETED=", s.stdout), s.stdout
        assert f"{vocab_job} FAILED" in s.stdout and "neither a fastText .bin model nor a .vec" in s.stdout
        assert re.search(rf"{train_job} CANCELLED before it started: its dependency failed: "
                         rf"vocab task {vocab_job} FAILED: .*neither a fastText", s.stdout), s.stdout
        assert f"t2v submit {spec} --executor slurm --stages vocab,train,evaluate" in s.stdout
    finally:
        subprocess.run(["scancel", train_job, eval_job])


def wait_ended(job: str, timeout: float = 180) -> dict:
    """The job's newest sacct row once it has ended."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = sacct(job)
        if rows and rows[-1]["state"] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            return rows[-1]
        time.sleep(1)
    raise AssertionError(f"job {job} still not ended after {timeout}s: {sacct(job)}")


@pytest.mark.slurm
def test_a_failed_frames_stage_cancels_the_chain_and_status_names_the_task(slurm, toy, tmp_path):
    """afterok is never met once a frames task has failed. With --kill-on-invalid-dep=yes SLURM
    cancels vocab, then train, at once instead of leaving them PENDING (DependencyNeverSatisfied)
    for ever. To make frames fail inside its jobs: a blocker holds both nodes while the chain is
    submitted, the videos dir is removed, then the blocker goes."""
    data = tmp_path / "data"
    shutil.copytree(toy, data)
    spec = spec_for(data, tmp_path, shard_size=3)  # more shards than MaxArraySize: two arrays
    shards = _motion_shards(toy, 3)
    blocker = subprocess.run(["sbatch", "--parsable", "-N2", "--exclusive", "-J", "t2v-blocker", "-o", "/dev/null",
                              "--wrap", "sleep 300"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        while not subprocess.run(["squeue", "-h", "-j", blocker, "-t", "R"], capture_output=True, text=True).stdout:
            time.sleep(0.2)
        r = t2v("submit", spec, "--executor", "slurm")
        frames_jobs = re.search(r"frames jobs (\d+),(\d+)\n", r.stdout).groups()
        vocab_job = re.search(r"vocab job (\d+)", r.stdout)[1]
        train_job = re.search(r"train job (\d+)", r.stdout)[1]
        shutil.rmtree(data / "videos")
    finally:
        subprocess.run(["scancel", blocker], check=True)
    t0 = time.time()
    for job in (vocab_job, train_job):
        row = wait_ended(job)
        assert row["state"].startswith("CANCELLED") and row["nodes"] == "None assigned", row  # never ran
    frames_rows = wait_done(",".join(frames_jobs), shards)  # the first failed task already cancelled vocab
    assert len(frames_rows) == shards and {row["state"] for row in frames_rows} == {"FAILED"}, frames_rows
    s = t2v("status", spec, check=False)
    assert s.returncode == 1
    assert re.search(rf"frames\s+not done .*jobs {','.join(frames_jobs)} \(slurm\): FAILED=10", s.stdout), s.stdout
    # The first 5 failed tasks, then the cause beside each cancelled stage (vocab, train, evaluate).
    assert s.stdout.count("UserError: videos directory not found") == 5 + 3
    assert "... and 5 more failed task(s)" in s.stdout
    for job in (vocab_job, train_job):
        assert re.search(rf"{job} CANCELLED before it started: its dependency failed: frames task "
                         rf"{frames_jobs[0]}_0 FAILED: .*UserError: videos directory not found.* \(and 9 more\)",
                         s.stdout), s.stdout
    assert f"t2v submit {spec} --executor slurm --stages frames,vocab,train,evaluate" in s.stdout
    print(f"vocab and train cancelled {time.time() - t0:.1f} s after the blocker went")


@pytest.mark.slurm
def test_sweep_is_one_throttled_array_grouped_in_mlflow(slurm, prepared, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    r = t2v("train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", tmp_path / "sw",
            "--preset", "debug_cpu", "--max-steps", "2", *sum((["--set", s] for s in TINY), []),
            "--sweep", "lr_g=1e-4,2e-4", "--sweep", "loss=bce,hinge", "--executor", "slurm",
            "--array-parallelism", "2", "--cpus-per-task", "2", "--mem-gb", "1", "--tracking-uri", uri)
    array = re.search(r"submitted array (\d+) \(4 tasks\)", r.stderr)[1]
    rows = wait_done(array, 4)
    assert sorted(row["id"] for row in rows) == [f"{array}_{k}" for k in range(4)]
    assert all(row["state"] == "COMPLETED" for row in rows), rows
    script = next((tmp_path / "sw" / "logs").glob("*_submission.sh")).read_text()
    assert "#SBATCH --array=0-3%2" in script
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("text2video").experiment_id
    parent = (tmp_path / "sw" / "mlflow_run_id").read_text().strip()
    kids = [r for r in c.search_runs([exp], filter_string="tags.`t2v.sweep` = 'sw'") if r.info.run_id != parent]
    assert len(kids) == 4 and {k.data.tags["mlflow.parentRunId"] for k in kids} == {parent}
    assert {(k.data.params["lr_g"], k.data.params["loss"]) for k in kids} == \
        {("0.0001", "bce"), ("0.0001", "hinge"), ("0.0002", "bce"), ("0.0002", "hinge")}
    assert {k.info.run_name for k in kids} == {"lr_g-1e-4_loss-bce", "lr_g-1e-4_loss-hinge",
                                               "lr_g-2e-4_loss-bce", "lr_g-2e-4_loss-hinge"}
    server = __import__("json").loads((tmp_path / "sw/tracking/server.json").read_text())
    assert {k.data.tags["t2v.tracking"] for k in kids} == {server["uri"]}  # one writer: the sweep's server
    assert f"--dependency=after:{server['job_id']}" in script
    for k in kids:
        assert [m.step for m in c.get_metric_history(k.info.run_id, "loss_G")] == [1, 2]
