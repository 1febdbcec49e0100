"""Shared fixtures: a real toy dataset (real VP9 encodes), a real MLflow server and a CLI runner."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.slurm import sacct_rows
from pipeline import tracking_server
from pipeline.toydata import make_toy

T2V = str(Path(sys.executable).with_name("t2v"))


def t2v(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    r = subprocess.run([T2V, *map(str, args)], capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"t2v {' '.join(map(str, args))} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    make_toy(out, videos=48, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def slurm():
    """The project's own cluster, brought up by `make test` (cluster.sh up). Skips
    with the reason only where it could not start; never silently."""
    import os
    import shutil

    if os.environ.get("T2V_NO_SLURM"):
        pytest.skip(os.environ["T2V_NO_SLURM"])
    if not os.environ.get("SLURM_CONF") or not shutil.which("sinfo"):
        pytest.skip("no SLURM cluster: run `make test`, or `containers/slurm-local/cluster.sh up` and export "
                    "the SLURM_CONF it prints")
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True)
    if r.returncode != 0 or r.stdout.count("idle") + r.stdout.count("mix") + r.stdout.count("alloc") < 2:
        pytest.fail(f"SLURM_CONF is set but the cluster is not healthy:\n{r.stdout}{r.stderr}")
    return os.environ["SLURM_CONF"]


def wait_done(job: str, n: int | None = None, timeout: float = 180) -> list[dict]:
    """sacct rows once every task's newest attempt has ended (accounting lags the job a little)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = sacct(job)
        last = {r["id"]: r["state"] for r in rows}  # -D lists a requeued job's attempts in order
        busy = [s for s in last.values() if s in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING")]
        if last and not busy and (n is None or len(last) >= n):
            return rows
        time.sleep(1)
    raise AssertionError(f"job {job} not done after {timeout}s: {sacct(job)}")


def sacct(job: str) -> list[dict]:
    """Rows of `sacct` for a job (array tasks included), as dicts: the reader `t2v status` uses."""
    return sacct_rows(job, since="now-2hours", check=True)


@pytest.fixture(scope="session")
def prepared(toy, tmp_path_factory):
    """Frames and vocab of the toy dataset, for the training tests."""
    d = tmp_path_factory.mktemp("prep")
    t2v("frames", "--labels", toy / "labels/train.json", "--videos", toy / "videos", "--out", d / "frames",
        "--shard-size", "64")
    t2v("vocab", "--labels", toy / "labels/train.json", toy / "labels/validation.json", "--out", d / "vocab",
        "--epoch", "5")
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback with its own sqlite store, started the way the pipeline
    starts one for a sweep (pipeline/tracking_server.py); yields its URI."""
    d = tmp_path_factory.mktemp("mlflow")
    try:  # without the basic-auth app: the UI tests drive pages, not logins (test_tracking checks auth)
        proc = tracking_server.start(f"sqlite:///{d}/mlflow.db", d, auth=False)
    except RuntimeError:
        pytest.fail("mlflow server did not start:\n" + (d / "server.log").read_text())
    yield tracking_server.read_server(d / tracking_server.SERVER_FILE)["uri"]
    tracking_server.stop(proc, d)
