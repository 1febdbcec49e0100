"""Integration tests on the project's own two-node SLURM cluster (real slurmctld,
slurmdbd + MariaDB, two slurmd; started by `make test` via cluster.sh)."""

import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import t2v, wait_done
from jobs.executor import Resources, make_executor, map_tasks, max_array_size
from test_train import TINY, assert_identical, state
from pipeline.train import build_config, run

pytestmark = pytest.mark.slurm
SMALL = ["--mem-gb", "1", "--timeout-min", "10"]


def test_frames_array_uses_both_nodes_and_a_cancelled_task_costs_only_its_shard(slurm, toy, tmp_path):
    out = tmp_path / "frames"
    args = ["frames", "--labels", toy / "labels/train.json", "--videos", toy / "videos", "--out", out,
            "--shard-size", "6", "--executor", "slurm", "--cpus-per-task", "2", "--array-parallelism", "2", *SMALL]
    r = t2v(*args, "--no-wait")
    array = re.search(r"submitted array (\d+) \((\d+) tasks\)", r.stderr)
    job, n = array[1], int(array[2])
    assert n >= 4
    os.system(f"scancel {job}_{n - 1}")  # still pending behind the %2 throttle
    rows = wait_done(job, n - 1)
    states = {row["id"]: row["state"] for row in rows}
    # A task cancelled while pending never gets its own accounting record in 22.05.
    assert states.get(f"{job}_{n - 1}", "CANCELLED").startswith("CANCELLED")
    assert all(states[f"{job}_{k}"] == "COMPLETED" for k in range(n - 1)), states
    nodes = {row["nodes"] for row in rows if row["state"] == "COMPLETED"}
    assert {"n1", "n2"} <= nodes, nodes  # one node per task (2 CPUs each): the array spans both
    shards = out / "shards"
    assert not (shards / f"shard-{n - 1:05d}.h5").exists() and not (out / "manifest.csv").exists()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("*.h5")}
    r = t2v(*args)  # resubmit: only the cancelled shard is redone
    assert f"{n - 1} complete, 1 to do" in r.stdout and "status counts: ok=" in r.stdout
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("*.h5")}
    assert {k: after[k] for k in before} == before and len(after) == n


def test_more_shards_than_max_array_size_go_as_several_arrays_under_one_throttle(slurm, toy, tmp_path):
    """submitit#1624: one array over the cluster's MaxArraySize is refused outright. The test
    cluster's limit is 8 (cluster.sh), so the toy set's 18 shards of 2 go as arrays of 8, 8 and
    2; with --array-parallelism 2 the first two run side by side at %1 and the third waits for
    the first."""
    limit = max_array_size()
    r = subprocess.run(["sbatch", f"--array=0-{limit}", "-o", "/dev/null", "--wrap", "true"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Invalid job array specification" in r.stderr  # one array of limit + 1
    out = tmp_path / "frames"
    args = ["frames", "--labels", toy / "labels/train.json", "--videos", toy / "videos", "--out", out,
            "--shard-size", "2", "--executor", "slurm", "--cpus-per-task", "1", "--array-parallelism", "2", *SMALL]
    shards = -(-len(json.loads((toy / "labels/train.json").read_text())) // 2)
    assert shards > 2 * limit  # three arrays: the last one waits
    dry = t2v(*args, "--dry-run").stdout
    assert f"{shards} to do" in dry and f"(MaxArraySize {limit}): 3 arrays, at most 2 tasks running" in dry
    assert "#SBATCH --array=0-7%1" in dry and "--dependency" not in dry
    r = t2v(*args)
    arrays = re.findall(r"submitted array (\d+) \((\d+) tasks\)", r.stderr)
    assert [int(k) for _, k in arrays] == [limit, limit, shards - 2 * limit], r.stderr
    assert "status counts: ok=" in r.stdout and len(list((out / "shards").glob("*.h5"))) == shards
    ids = ",".join(a for a, _ in arrays)
    wait_done(ids, shards)
    third = (out / "logs/frames" / f"{arrays[2][0]}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterany:{arrays[0][0]}" in third and \
        f"#SBATCH --array=0-{shards - 2 * limit - 1}%1" in third
    rows = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobID,State,Start,End"],
                          capture_output=True, text=True, check=True).stdout.split()
    rows = [row.split("|") for row in rows]
    assert len(rows) == shards and {row[1] for row in rows} == {"COMPLETED"}, rows
    events = sorted([(row[2], 1) for row in rows] + [(row[3], -1) for row in rows])  # an end sorts first
    running = [sum(e for _, e in events[:k + 1]) for k in range(len(events))]
    assert max(running) <= 2, rows  # the throttle holds across the arrays


def test_two_node_ddp_over_gloo(slurm, prepared, tmp_path):
    run_dir = tmp_path / "ddp2"
    sets = sum((["--set", s] for s in TINY), [])
    r = t2v("train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", run_dir,
            "--preset", "debug_cpu", "--max-steps", "3", *sets, "--executor", "slurm", "--nodes", "2",
            "--tasks-per-node", "1", "--cpus-per-task", "1",  # no memory or time limit given: the defaults fit
            "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert "weights on 2 rank(s): identical" in r.stdout, r.stdout + r.stderr
    job = re.search(r"submitted job (\d+)", r.stderr)[1]
    (row,) = wait_done(job)
    assert row["state"] == "COMPLETED" and row["nodes"] == "n[1-2]"
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("text2video").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"
    assert runs[0].info.run_id == (run_dir / "mlflow_run_id").read_text().strip()


def test_preempted_training_checkpoints_requeues_and_finishes_exactly(slurm, prepared, tmp_path):
    steps = 16
    straight = tmp_path / "straight"
    run(build_config(prepared / "frames", prepared / "vocab", straight, "debug_cpu",
                     TINY + [f"max_steps={steps}", "checkpoint_every=1000",
                             f"tracking_uri=sqlite:///{tmp_path}/ml0/mlflow.db"]))
    run_dir = tmp_path / "preempted"
    sets = sum((["--set", s] for s in TINY + ["checkpoint_every=1000"]), [])
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    r = t2v("train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", run_dir,
            "--preset", "debug_cpu", "--max-steps", str(steps), *sets, "--executor", "slurm", "--no-wait",
            "--cpus-per-task", "2", *SMALL, "--tracking-uri", uri)
    job = re.search(r"submitted job (\d+)", r.stderr)[1]
    log = run_dir / "logs" / f"{job}_0_log.err"
    deadline = time.time() + 120
    while not (log.exists() and "step 4/" in log.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    # To the job's steps, as a preemption notice: submitit's signal, the one in the sbatch --signal.
    assert os.system(f"scancel --signal=USR2 {job}") == 0
    rows = wait_done(job, timeout=240)
    assert [row["state"] for row in rows][-1] == "COMPLETED"
    assert any(row["state"] == "REQUEUED" for row in rows), rows  # sacct -D shows the requeue
    assert_identical(state(run_dir), state(straight))
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    steps_logged = [m.step for m in c.get_metric_history(run_id, "loss_G")]
    assert sorted(steps_logged) == list(range(1, steps + 1))  # one run, every step once
    assert c.get_run(run_id).info.status == "FINISHED"
    assert torch.load(run_dir / "generator.pt", weights_only=True)["step"] == steps


def test_requeue_keeps_the_first_attempts_log(slurm, tmp_path):
    """`scontrol requeue` restarts a job under the same id, so into the same log files. Ours
    append; a control job that opens its logs with truncate (a site default can) loses the
    first attempt's lines, which shows the check would catch a regression."""
    cmd = "echo attempt-${SLURM_RESTART_COUNT:-0} out; echo attempt-${SLURM_RESTART_COUNT:-0} err >&2; sleep 4"
    res = Resources(cpus_per_task=1, mem_gb=0.25, timeout_min=5)
    ours = make_executor("slurm", tmp_path / "append", res, "t2v-requeue").submit(os.system, cmd)
    ex = make_executor("slurm", tmp_path / "truncate", res, "t2v-requeue")
    ex.update_parameters(additional_parameters={"open-mode": "truncate"})
    control = ex.submit(os.system, cmd)
    assert "#SBATCH --open-mode=append" in ours.paths.submission_file.read_text()
    deadline = time.time() + 120
    while time.time() < deadline and not all(
            j.paths.stderr.exists() and "attempt-0" in j.paths.stderr.read_text() for j in (ours, control)):
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", f"{ours.job_id},{control.job_id}"], check=True)
    for j in (ours, control):
        assert [r["state"] for r in wait_done(j.job_id)] == ["REQUEUED", "COMPLETED"]
    for path in (ours.paths.stdout, ours.paths.stderr):
        text = path.read_text()
        assert "attempt-0" in text and "attempt-1" in text and text.index("attempt-0") < text.index("attempt-1")
    assert "DUE TO JOB REQUEUE" in ours.paths.stderr.read_text()  # SLURM's own note, kept in between
    assert "attempt-0" not in control.paths.stderr.read_text() and "attempt-1" in control.paths.stderr.read_text()


def sacct_logged(tmp_path, monkeypatch) -> Path:
    """Put a `sacct` first on PATH that logs each call (time, arguments) and runs the real one."""
    real, log = shutil.which("sacct"), tmp_path / "sacct.log"
    wrapper = tmp_path / "bin" / "sacct"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    return log


def test_waiting_on_a_50_task_array_costs_a_few_batched_sacct_calls(slurm, tmp_path, monkeypatch):
    log = sacct_logged(tmp_path, monkeypatch)
    res = Resources(cpus_per_task=1, mem_gb=0.25, timeout_min=5)
    t0 = time.time()
    outs = map_tasks(abs, range(-25, 25), kind="slurm", folder=tmp_path / "logs", res=res, name="t2v-poll")
    wall = time.time() - t0
    assert [o.result for o in outs] == [abs(k) for k in range(-25, 25)]
    calls = [line.split() for line in log.read_text().splitlines()]
    arrays = ",".join(sorted({o.job_id.split("_")[0] for o in outs}, key=int))
    assert all(c[c.index("-j") + 1] == arrays for c in calls), calls  # every array in one call, never per task
    times = [float(c[0]) for c in calls]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(b > 1.5 * a for a, b in zip(gaps, gaps[1:])), gaps  # nothing needed sacct: it backs off
    assert len(calls) <= math.log2(wall + 1) + 1, (len(calls), wall)
    print(f"50 tasks: {len(calls)} sacct calls in {wall:.1f} s, gaps {[round(g, 1) for g in gaps]}")


def test_a_cancelled_array_is_reported_within_seconds(slurm, tmp_path, monkeypatch):
    """Tasks that end without a result are only visible to sacct. Two of the four are still
    pending (throttle %2) when the array is cancelled: SLURM 22.05 lists those as "A_[2-3%2]"
    or, in a race with the scheduler, under the array's bare id "A" alone (submitit's wait then
    never returns). submitit's wait also spends 15 s on each task without a result. Here all
    four are reported a few seconds after the scancel."""
    log = sacct_logged(tmp_path, monkeypatch)
    name, cancelled = f"t2v-cancel-{os.getpid()}", []

    def cancel_once_running():
        while not subprocess.run(["squeue", "-h", "-n", name, "-t", "R"], capture_output=True, text=True).stdout:
            time.sleep(0.2)
        time.sleep(1)
        subprocess.run(["scancel", "-n", name], check=True)
        cancelled.append(time.time())

    threading.Thread(target=cancel_once_running, daemon=True).start()
    outs = map_tasks(time.sleep, [300] * 4, kind="slurm", folder=tmp_path / "logs", name=name,
                     res=Resources(cpus_per_task=1, mem_gb=0.25, timeout_min=10, array_parallelism=2))
    after = time.time() - cancelled[0]
    assert all(not o.ok and o.error.startswith("ended CANCELLED without a result") for o in outs), outs
    assert after < 30, after
    calls = [line.split() for line in log.read_text().splitlines()]
    assert {c[c.index("-j") + 1] for c in calls} == {outs[0].job_id.split("_")[0]}, calls  # the array's id, once
    print(f"4 cancelled tasks reported {after:.1f} s after scancel, {len(calls)} sacct calls")
