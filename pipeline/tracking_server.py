"""One `mlflow server` per chain or sweep: many tasks, one process writing the SQLite store.

SQLite takes one writer at a time. Sweep tasks writing to one store directly race on its
locks ("database is locked", mlflow#12259, PR #6490). So the pipeline serves the store
itself: locally as a child of the submitting process, on SLURM as a one-CPU job that the
chain's MLflow-writing jobs start after (`--dependency=after:`). The server publishes its
URI in DIR/server.json once it answers. Tasks read that file (`resolve`). While no live
server answers (a server job being requeued, say), they write to the store directly, so
no metric is dropped for want of a server.

Artifacts bypass the server: the experiment's artifact location is a directory beside the
store (`artifact_root`), which every task writes to on the shared file system.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .files import write_json

SERVER_FILE = "server.json"  # {"state", "uri", "host", "port", "pid", "job_id", "store", "time"}
# server.json's states: "starting" (job submitted), "serving" (uri answers), "restarting" (job
# requeued), "stopped" (its jobs have ended). Tasks wait for the first and third, not the last.
WAIT_FOR = ("starting", "serving", "restarting")


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside it (not in the cwd); tasks write them straight to
    the shared file system, also when their metadata goes through a tracking server."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").absolute().as_uri()
    return None


def healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def read_server(server_file) -> dict | None:
    try:
        return json.loads(Path(server_file).read_text())
    except (OSError, ValueError):
        return None


def resolve(store_uri: str, server_file: str | os.PathLike | None, wait_s: float = 0.0) -> str:
    """The URI to log to: the chain's server if `server_file` names a live one, else the store.
    Waits up to `wait_s` for a server that is starting or restarting; none for a stopped one."""
    if not server_file:
        return store_uri
    deadline = time.time() + wait_s
    while True:
        info = read_server(server_file) or {}
        if info.get("state") == "serving" and healthy(info["uri"]):
            return info["uri"]
        if info.get("state") not in WAIT_FOR or time.time() >= deadline:
            return store_uri
        time.sleep(1.0)


def announce(folder, job_id: str) -> None:
    """Written by the submitter: a server job is coming, so tasks that start first wait for it."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_json(Path(folder) / SERVER_FILE, dict(state="starting", job_id=str(job_id), time=time.time()))


def _free_port(bind: str) -> int:
    with socket.socket() as s:
        s.bind((bind, 0))
        return s.getsockname()[1]


def start(store_uri: str, folder, public_host: str | None = None, workers: int = 1,
          wait_s: float = 120.0, job_id: str | None = None) -> subprocess.Popen:
    """Start `mlflow server` on the store; return once it answers and server.json names it.

    Without `public_host` it listens on loopback only (local executor). With one it listens on
    every interface and admits that host name, which is what tasks on other nodes connect to.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bind, name = ("0.0.0.0", public_host) if public_host else ("127.0.0.1", "127.0.0.1")
    for _ in range(3):  # the free port may be taken between asking and binding: try another
        port = _free_port(bind)
        hosts = {name, socket.getfqdn() if public_host else name, "localhost", "127.0.0.1"}
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
               "--host", bind, "--port", str(port), "--workers", str(workers),
               # mlflow 3 refuses Host headers it doesn't know (DNS-rebinding guard): name ours.
               "--allowed-hosts", ",".join(sorted(hosts | {f"{h}:{port}" for h in hosts}))]
        if art := artifact_root(store_uri):
            cmd += ["--default-artifact-root", art, "--no-serve-artifacts"]
        # SQLAlchemy's default pool (5 + 10 overflow, 30 s timeout) is smaller than the number of
        # requests the server handles at once: with 32 busy writers, 14 of them died of "QueuePool
        # limit ... reached" (bench/mlflow_writers.py --writers 32 --metrics 200). A bigger pool
        # leaves the queueing to SQLite's own lock, inside this one process.
        # MLflow 3's server also starts a job runner and several huey worker processes (GenAI
        # jobs, which write to the store too): nothing here uses them, so they stay off.
        env = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "64", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               **os.environ}
        with open(folder / "server.log", "a") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        uri = f"http://{name}:{port}"
        deadline = time.time() + wait_s
        while proc.poll() is None and time.time() < deadline:
            if healthy(uri):
                write_json(folder / SERVER_FILE, dict(
                    state="serving", uri=uri, host=name, port=port, pid=proc.pid,
                    job_id=job_id, store=store_uri, time=time.time()))
                return proc
            time.sleep(0.5)
        stop(proc, folder)
    raise RuntimeError(f"mlflow server on {store_uri} did not start; see {folder / 'server.log'}")


def stop(proc: subprocess.Popen, folder, final: bool = True) -> None:
    """Mark server.json stopped (or restarting, when the job comes back), then stop the server."""
    f = Path(folder) / SERVER_FILE
    info = read_server(f) or {}
    if info.get("pid") == proc.pid:
        info.update(state="stopped" if final else "restarting", time=time.time())
        write_json(f, info)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class LocalServer:
    """`with LocalServer(store, folder):` a loopback server for the duration of a local chain or sweep."""

    def __init__(self, store_uri: str, folder):
        self.store_uri, self.folder = store_uri, Path(folder)
        self.proc = None

    def __enter__(self) -> "LocalServer":
        self.proc = start(self.store_uri, self.folder)
        return self

    @property
    def uri(self) -> str:
        return (read_server(self.folder / SERVER_FILE) or {}).get("uri", "")

    def __exit__(self, *exc) -> None:
        stop(self.proc, self.folder)
