"""Preemption on the real two-node cluster: the failures users of submitit and Lightning hit.

Each test sends submitit's preemption signal (SIGUSR2) the way SLURM does before a
preemption, to a job, one array task, or one rank of a two-node job.
"""

import os
import re
import signal
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import t2v, wait_done
from test_train import TINY

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _train(prepared, run_dir, steps, uri, *extra):
    sets = sum((["--set", s] for s in TINY + ["checkpoint_every=1000"]), [])
    return t2v("train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", run_dir,
               "--preset", "debug_cpu", "--max-steps", str(steps), *sets, "--executor", "slurm", "--no-wait",
               "--cpus-per-task", "2", "--mem-gb", "1", "--tracking-uri", uri, *extra)


def _wait_for(path, pattern, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text, re.M):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in {path} after {timeout}s:\n{text[-2000:]}")


def _steps_seen(text):
    return [int(s) for s in re.findall(r"^step (\d+)/", text, re.M)]


def test_short_job_preempted_four_times_finishes_and_each_resume_goes_further(slurm, prepared, tmp_path):
    """submitit#1656: a 5-minute job was called timed out and stopped being requeued.
    fairchem#1055: a requeue must never resume from a stale checkpoint path."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    run_dir = tmp_path / "short"
    steps = 200
    r = _train(prepared, run_dir, steps, uri, "--timeout-min", "5")
    job = re.search(r"submitted job (\d+)", r.stderr)[1]
    log = run_dir / "logs" / f"{job}_0_log.err"
    for k in range(4):
        # Wait for progress past the last resume (or the start), then preempt.
        text = _wait_for(log, r"^step \d+/", 240)
        floor = max([0] + [int(s) for s in re.findall(r"resuming .* from step (\d+)", text)])
        while max(_steps_seen(text) or [0]) < floor + 3:
            time.sleep(0.2)
            text = log.read_text(errors="replace")
        assert os.system(f"scancel --signal=USR2 {job}") == 0
        _wait_for(log, rf"(?s)(resuming .*){{{k + 1}}}", 240)  # requeued and back
    rows = wait_done(job, timeout=300)
    assert rows[-1]["state"] == "COMPLETED", rows
    assert sum(r["state"] == "REQUEUED" for r in rows) == 4, rows
    text = log.read_text()  # one log across attempts (--open-mode=append)
    resumes = [int(s) for s in re.findall(r"resuming .* from step (\d+)", text)]
    assert len(resumes) == 4 and resumes == sorted(set(resumes)) and resumes[0] >= 3, resumes
    c = MlflowClient(uri)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert sorted(m.step for m in c.get_metric_history(run_id, "loss_G")) == list(range(1, steps + 1))
    assert c.get_run(run_id).info.status == "FINISHED"


def test_preempting_one_sweep_task_requeues_only_that_task(slurm, prepared, tmp_path):
    """Lightning#15022: one preempted task requeued the whole array."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    r = _train(prepared, tmp_path / "sw", 120, uri, "--sweep", "lr_g=1e-4,2e-4", "--array-parallelism", "2",
               "--timeout-min", "10", "--cpus-per-task", "1")  # two points side by side on this 2-core host
    array = re.search(r"submitted array (\d+) \(2 tasks\)", r.stderr)[1]
    logs = tmp_path / "sw" / "logs"
    deadline = time.time() + 240
    while time.time() < deadline:
        texts = [p.read_text(errors="replace") for p in logs.glob(f"{array}_*_log.err")]
        if len(texts) == 2 and all(re.search(r"^step 3/", t, re.M) for t in texts):
            break
        time.sleep(0.2)
    assert os.system(f"scancel --signal=USR2 {array}_1") == 0
    rows = wait_done(array, 2, timeout=300)
    by_task = {}
    for row in rows:
        by_task.setdefault(row["id"], []).append(row["state"])
    assert by_task[f"{array}_0"] == ["COMPLETED"], by_task  # untouched
    assert by_task[f"{array}_1"][-1] == "COMPLETED" and "REQUEUED" in by_task[f"{array}_1"], by_task


def test_signal_to_one_rank_of_a_two_node_job_stops_both_cleanly(slurm, prepared, tmp_path):
    """submitit#9: only global rank 0 checkpoints. Here the signal reaches only the rank on
    n2; both ranks stop at the same step, rank 0 writes, the job requeues and finishes."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    run_dir = tmp_path / "two"
    # One CPU per rank: both "nodes" share this host's cores (and torch follows SLURM_CPUS_PER_TASK).
    r = _train(prepared, run_dir, 60, uri, "--nodes", "2", "--tasks-per-node", "1", "--timeout-min", "10",
               "--cpus-per-task", "1")
    job = re.search(r"submitted job (\d+)", r.stderr)[1]
    _wait_for(run_dir / "logs" / f"{job}_0_log.err", r"^step 3/", 240)
    rank1 = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if (f"SLURM_JOB_ID={job}".encode() in env and b"SLURM_PROCID=1" in env
                and b"submitit.core._submit" in cmd):
            rank1.append(int(pid))
    assert rank1, "rank 1's process not found"
    for pid in rank1:
        os.kill(pid, signal.SIGUSR2)
    rows = wait_done(job, timeout=300)
    assert rows[-1]["state"] == "COMPLETED" and any(r["state"] == "REQUEUED" for r in rows), rows
    text = (run_dir / "logs" / f"{job}_0_log.err").read_text()
    assert re.search(r"resuming .* from step (\d+)", text), text[-2000:]
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("text2video").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    out = subprocess.run(["sacct", "-n", "-P", "-j", job, "-o", "JobID,State"], capture_output=True, text=True)
    assert "FAILED" not in out.stdout, out.stdout  # nobody crashed or hung in a collective
