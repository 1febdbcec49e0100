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

The server belongs to whoever submitted: MLflow's basic-auth app, with one user (the
submitter's login name) and a password generated per submission. Both live in
DIR/credentials.json (mode 0600); the submitter hands them to its tasks in their environment
(MLFLOW_TRACKING_USERNAME/PASSWORD, which MLflow's client reads), never on a command line.
A request without them is refused (401), reads included. On SLURM the server listens on the
address its node's name resolves to (T2V_MLFLOW_BIND overrides), never on every interface.
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
CREDENTIALS_FILE = "credentials.json"  # {"username", "password", "secret_key"}, mode 0600
AUTH_DB, AUTH_INI = "auth.db", "auth.ini"  # the basic-auth app's user store and its settings
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


def new_credentials(folder) -> dict:
    """A fresh user/password for one submission, written to FOLDER/credentials.json (0600).

    The previous submission's user store goes with the old password: the auth app keeps the
    admin user it finds and would refuse the new password otherwise."""
    import getpass
    import secrets

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    creds = {"username": getpass.getuser(), "password": secrets.token_urlsafe(24),
             "secret_key": secrets.token_urlsafe(32)}  # Flask's CSRF key, static across workers
    tmp = folder / f".{CREDENTIALS_FILE}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    os.replace(tmp, folder / CREDENTIALS_FILE)
    (folder / AUTH_DB).unlink(missing_ok=True)
    return creds


def credentials(folder) -> dict:
    """The submission's credentials (see new_credentials); made now if it has none yet."""
    try:
        return json.loads((Path(folder) / CREDENTIALS_FILE).read_text())
    except (OSError, ValueError):
        return new_credentials(folder)


class exported:
    """`with exported(creds):` this process's environment holds the client credentials, so the
    tasks it starts (local subprocesses, sbatch jobs: both copy it) inherit them."""

    def __init__(self, creds: dict):
        self.env, self.saved = client_env(creds), {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def client_env(creds: dict) -> dict:
    """What a task's environment needs to talk to the server (MLflow's client reads these)."""
    return {"MLFLOW_TRACKING_USERNAME": creds["username"], "MLFLOW_TRACKING_PASSWORD": creds["password"]}


def bind_address(host: str) -> str:
    """The address a server on node `host` listens on: the one its name resolves to, which is
    what tasks on other nodes connect to (T2V_MLFLOW_BIND overrides, e.g. where the node's
    name resolves to a loopback address locally but to its network address elsewhere)."""
    return os.environ.get("T2V_MLFLOW_BIND") or socket.gethostbyname(host)


def _auth_env(folder: Path) -> dict:
    """The server process's environment for the basic-auth app: settings file, admin, keys."""
    creds = credentials(folder)
    ini = folder / AUTH_INI
    ini.unlink(missing_ok=True)
    fd = os.open(ini, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # older MLflow reads the password here
    with os.fdopen(fd, "w") as f:
        f.write("[mlflow]\n"
                "default_permission = NO_PERMISSIONS\n"  # the owner (admin) is the only user
                f"database_uri = sqlite:///{(folder / AUTH_DB).absolute()}\n"
                f"admin_username = {creds['username']}\n"
                f"admin_password = {creds['password']}\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": creds["password"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["secret_key"]}


def _free_port(bind: str) -> int:
    with socket.socket() as s:
        s.bind((bind, 0))
        return s.getsockname()[1]


def start(store_uri: str, folder, public_host: str | None = None, workers: int = 1,
          wait_s: float = 120.0, job_id: str | None = None, auth: bool = True) -> subprocess.Popen:
    """Start `mlflow server` (basic-auth app, FOLDER/credentials.json) on the store; return once
    it answers and server.json names it.

    Without `public_host` it listens on loopback only (local executor). With one it listens on
    that host's own address and admits its name, which is what tasks on other nodes connect to.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bind, name = (bind_address(public_host), public_host) if public_host else ("127.0.0.1", "127.0.0.1")
    auth_env = _auth_env(folder) if auth else {}  # auth=False: a loopback server for tests of the UI itself
    for _ in range(3):  # the free port may be taken between asking and binding: try another
        port = _free_port(bind)
        hosts = {name, bind, socket.getfqdn() if public_host else name, "localhost", "127.0.0.1"}
        cmd = [sys.executable, "-m", "mlflow", "server", *(["--app-name", "basic-auth"] if auth else []),
               "--backend-store-uri", store_uri,
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
               **os.environ, **auth_env}
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
        self.proc, self.env = None, None

    def __enter__(self) -> "LocalServer":
        self.env = exported(new_credentials(self.folder)).__enter__()  # for the tasks started meanwhile
        try:
            self.proc = start(self.store_uri, self.folder)
        except BaseException:
            self.env.__exit__()
            raise
        return self

    @property
    def uri(self) -> str:
        return (read_server(self.folder / SERVER_FILE) or {}).get("uri", "")

    def __exit__(self, *exc) -> None:
        try:
            stop(self.proc, self.folder)
        finally:
            self.env.__exit__()
