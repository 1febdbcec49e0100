"""Requests checked against what the cluster offers (jobs/cluster.py), before anything is submitted.

Most tests ask the project's own two-node cluster (nodes of 3 CPUs and 4000 MB, no GPUs, no time
limit). GPUs and partition time limits cannot exist there, so those checks read the text of a
GPU site's `scontrol show partition/node -o` (the one place a stand-in is used)."""

import re
import subprocess

import pytest

from conftest import t2v
from jobs.cluster import fit, minutes, parse
from jobs.executor import Resources, run_job
from pipeline.errors import UserError

GPU_SITE = (
    "PartitionName=gpu AllowGroups=ALL Default=NO MaxNodes=4 MaxTime=2-00:00:00 MaxCPUsPerNode=UNLIMITED "
    "Nodes=g[1-2] State=UP MaxMemPerNode=UNLIMITED\n"
    "PartitionName=cpu Default=YES MaxNodes=UNLIMITED MaxTime=04:00:00 Nodes=c1 State=UP MaxMemPerNode=64000\n",
    "NodeName=g1 CPUTot=32 CPUEfctv=32 Gres=gpu:a100:4(S:0-1) RealMemory=512000 State=IDLE Partitions=gpu\n"
    "NodeName=g2 CPUTot=32 CPUEfctv=32 Gres=gpu:a100:4(S:0-1) RealMemory=512000 State=IDLE Partitions=gpu\n"
    "NodeName=c1 CPUTot=16 CPUEfctv=16 Gres=(null) RealMemory=128000 State=IDLE Partitions=cpu\n",
)


def asked(**kw) -> Resources:
    return Resources(**kw, asked=frozenset(kw))


def test_slurm_time_limits_parse():
    assert [minutes(t) for t in ("UNLIMITED", "30", "30:30", "2:00:00", "1-12", "1-00:00:00")] == \
        [None, 30, 30.5, 120, 2160, 1440]


def test_gpus_and_time_limits_are_checked_and_defaults_capped():
    site = parse(*GPU_SITE)
    assert [n.gpus for n in site["gpu"].nodes] == [4, 4] and site["cpu"].max_time_min == 240
    ok = fit(asked(partition="gpu", gpus_per_node=4, nodes=2, tasks_per_node=4, cpus_per_task=8), "train", cluster=site)
    assert ok.timeout_min == 60 and ok.mem_gb is None  # our defaults fit; no memory asked for
    for res, msg in [
        (asked(partition="gpu", gpus_per_node=8), "--gpus-per-node 8, but the nodes in partition gpu have at most 4 "
                                                  "GPUs; pass --gpus-per-node 4 or less"),
        (asked(gpus_per_node=1), "partition cpu has no GPUs"),
        (asked(partition="gpu", nodes=3), "--nodes 3, but partition gpu has 2 node(s)"),
        (asked(timeout_min=300), "--timeout-min 300 min, but partition cpu allows at most 240 min; "
                                 "pass --timeout-min 240 or less"),
        (asked(mem_gb=100), "--mem-gb 100 per task, but the largest node in partition cpu has 62.5 GB"),
        (asked(partition="gpu", cpus_per_task=16, tasks_per_node=4), "pass --cpus-per-task 8 or less"),
    ]:
        with pytest.raises(UserError, match=re.escape(msg)):
            fit(res, "train", cluster=site)
    # A default above the partition's limit is lowered, not refused: it must run at any site.
    capped = fit(Resources(timeout_min=600, mem_gb=200), "train", cluster=site)
    assert (capped.timeout_min, capped.mem_gb) == (240, 62.5)


@pytest.mark.slurm
@pytest.mark.parametrize("cmd, extra, msg", [
    ("frames", ["--mem-gb", "8"], "frames: --mem-gb 8 per task, but the largest node in partition debug has 3.9 GB; "
                                  "pass --mem-gb 3.9 or less"),
    ("frames", ["--mem-gb", "8", "--dry-run"], "frames: --mem-gb 8 per task"),  # the dry run shows the check
    ("frames", ["--partition", "nope"], "no partition 'nope' on this cluster (it has debug); pass --partition"),
    ("vocab", ["--cpus-per-task", "4"], "--cpus-per-task 4, but the largest node in partition debug has 3 CPUs; "
                                        "pass --cpus-per-task 3 or less"),
    ("vocab", ["--account", "nobody"], "no account 'nobody' in the accounting database"),
    ("vocab", ["--qos", "gold"], "no qos 'gold' in the accounting database"),
    ("train", ["--nodes", "3"], "--nodes 3, but partition debug has 2 node(s)"),
    ("train", ["--nodes", "2", "--tasks-per-node", "2", "--cpus-per-task", "2"], "pass --cpus-per-task 1 or less"),
    ("train", ["--mem-gb", "0"], "--mem-gb must be > 0"),
])
def test_a_request_the_cluster_cannot_meet_is_one_line_before_any_submission(slurm, toy, prepared, tmp_path, cmd,
                                                                             extra, msg):
    args = {"frames": ["--labels", toy / "labels/train.json", "--videos", toy / "videos", "--out", tmp_path / "f"],
            "vocab": ["--labels", toy / "labels/train.json", "--out", tmp_path / "v"],
            "train": ["--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", tmp_path / "run"]}[cmd]
    before = _jobs()
    r = t2v(cmd, *args, "--executor", "slurm", *extra, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert errors == [f"t2v {cmd}: error: {errors[0].split('error: ', 1)[1]}"] and msg in errors[0], r.stderr
    assert _jobs() == before and not list(tmp_path.rglob("*.sh"))  # nothing reached sbatch


def _jobs() -> str:
    return subprocess.run(["sacct", "-n", "-X", "-S", "now-1hours", "-o", "JobID"], capture_output=True,
                          text=True).stdout


@pytest.mark.slurm
def test_vocab_runs_on_slurm_with_the_default_resources(slurm, toy, tmp_path):
    r = t2v("vocab", "--labels", toy / "labels/train.json", "--out", tmp_path / "v", "--epoch", "2",
            "--executor", "slurm")
    assert "wrote" in r.stdout and (tmp_path / "v/embeddings.h5").exists()
    script = next((tmp_path / "v/logs/vocab").glob("*_submission.sh")).read_text()
    assert "--mem" not in script and "#SBATCH --time=60" in script  # the site's memory default applies


@pytest.mark.slurm
def test_a_refusal_sbatch_still_makes_is_one_line_with_its_own_message(slurm, tmp_path, capsys):
    """Past the check (as a limit it cannot see would be), sbatch's own refusal is one UserError."""
    with pytest.raises(UserError) as e:
        run_job(print, kind="slurm", folder=tmp_path, res=Resources(mem_gb=8, cpus_per_task=1), name="t2v-big")
    assert str(e.value) == "t2v-big: sbatch refused the job: sbatch: error: Memory specification can not be satisfied"
    assert "sbatch: error" not in capsys.readouterr().err  # not printed twice
