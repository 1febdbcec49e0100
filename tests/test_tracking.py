"""Many writers, one SQLite MLflow store (mlflow#12259, PR #6490): the store and the experiment
are created once, up front, and the writers go through one `mlflow server` that the pipeline
starts (pipeline/tracking_server.py), falling back to the store while none answers."""

import json
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from jobs.executor import Resources, map_tasks
from jobs.server import ChainServer
from pipeline.tracking import Tracker, prepare_store
from pipeline.tracking_server import LocalServer, client_env, credentials, read_server, resolve, start, stop

WRITER = """
import sys
from pathlib import Path
from pipeline.tracking import Tracker
uri, k, run_dir, server = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] or None
run_dir.mkdir(parents=True)
t = Tracker(uri, "many", run_dir, {"k": k, "lr": 0.1 * k}, {"writer": k}, server_file=server)
for step in range(1, 11):
    t.metrics(step, {"loss_G": k + step / 10, "loss_D": -k})
t.finish()
assert t.ok and t.run_id, "tracker failed"
print("logged via", t.uri)
"""


def writer(uri, k, run_dir, server=""):
    return [sys.executable, "-c", WRITER, uri, str(k), str(run_dir), str(server)]


def assert_all_arrived(uri, n=16, via=None):
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("many").experiment_id], max_results=100)
    assert len(runs) == n
    for r in runs:
        k = int(r.data.params["k"])
        hist = sorted((m.step, m.value) for m in c.get_metric_history(r.info.run_id, "loss_G"))
        assert hist == [(s, k + s / 10) for s in range(1, 11)]
        assert r.info.status == "FINISHED" and r.data.tags["writer"] == str(k)
        if via:
            assert r.data.tags["t2v.tracking"] == via  # the run went through the server, not the file
    return runs


def run_writers(argvs):
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(errs)


def test_sixteen_concurrent_writers_on_a_prepared_store_all_arrive(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    prepare_store(uri, "many")  # what `t2v train/submit` does before submitting
    run_writers([writer(uri, k, tmp_path / f"r{k}") for k in range(16)])
    assert_all_arrived(uri)


def test_sixteen_concurrent_writers_through_the_pipeline_server_all_arrive(tmp_path):
    """What a local sweep does: a fresh store, prepared once, served by one loopback server."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    prepare_store(uri, "many")
    with LocalServer(uri, tmp_path / "tracking") as server:
        assert server.uri.startswith("http://127.0.0.1:")
        run_writers([writer(uri, k, tmp_path / f"r{k}", tmp_path / "tracking/server.json") for k in range(16)])
        via = server.uri
    assert read_server(tmp_path / "tracking/server.json")["state"] == "stopped"
    assert_all_arrived(uri, via=via)


def test_a_tracker_falls_back_to_the_store_and_returns_to_a_new_server(tmp_path, capsys, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    prepare_store(uri, "many")
    folder, run_dir = tmp_path / "tracking", tmp_path / "run"
    run_dir.mkdir()
    proc = start(uri, folder)
    for k, v in client_env(credentials(folder)).items():  # what a submitted task's environment holds
        monkeypatch.setenv(k, v)
    first = read_server(folder / "server.json")["uri"]
    t = Tracker(uri, "many", run_dir, {"k": 1}, {}, server_file=str(folder / "server.json"))
    assert t.uri == first
    for step in (1, 2, 3):
        t.metrics(step, {"loss_G": step})
    stop(proc, folder, final=False)  # what a requeued server job does on its way out
    assert read_server(folder / "server.json")["state"] == "restarting"
    for step in (4, 5, 6):
        t.metrics(step, {"loss_G": step})
    assert t.uri == uri and t.ok  # straight to the file: nothing dropped
    proc = start(uri, folder)  # the job is back, on another port
    second = read_server(folder / "server.json")["uri"]
    assert second != first
    t.RECHECK_S = 0  # (60 s in a run)
    for step in (7, 8, 9):
        t.metrics(step, {"loss_G": step})
    assert t.uri == second
    t.finish()
    stop(proc, folder)
    c = MlflowClient(uri)
    assert [m.step for m in c.get_metric_history(t.run_id, "loss_G")] == list(range(1, 10))
    assert c.get_run(t.run_id).info.status == "FINISHED"
    err = capsys.readouterr().err
    assert f"now logging to {uri} (the store: no live server)" in err and f"now logging to {second}" in err


@pytest.mark.parametrize("state, waits", [("starting", True), ("restarting", True), ("stopped", False)])
def test_resolve_waits_only_for_a_server_that_is_coming(tmp_path, state, waits):
    f = tmp_path / "server.json"
    f.write_text(json.dumps({"state": state, "uri": "http://127.0.0.1:9"}))
    t0 = time.time()
    assert resolve("sqlite:///x.db", f, wait_s=2) == "sqlite:///x.db"
    assert (time.time() - t0 >= 2) == waits
    assert resolve("sqlite:///x.db", tmp_path / "missing.json", wait_s=2) == "sqlite:///x.db"


def test_the_server_mode_is_checked():
    with pytest.raises(Exception, match="not one of auto, on, off"):
        ChainServer("maybe", "sqlite:////tmp/x.db", "/tmp/t", "local")
    with pytest.raises(Exception, match="serves a sqlite"):
        ChainServer("on", "http://somewhere:5000", "/tmp/t", "local")
    assert not ChainServer("auto", "http://somewhere:5000", "/tmp/t", "slurm").wanted  # served already
    assert not ChainServer("auto", "sqlite:////tmp/x.db", "/tmp/t", "local").wanted  # one local writer
    assert ChainServer("auto", "sqlite:////tmp/x.db", "/tmp/t", "local", many=True).wanted
    assert ChainServer("auto", "sqlite:////tmp/x.db", "/tmp/t", "slurm").wanted


@pytest.mark.slurm
def test_sixteen_array_tasks_write_through_a_server_job_that_stops_after_them(slurm, tmp_path):
    """The SLURM form: the server is a one-CPU job, the 16-task array starts after it
    (--dependency=after:), and the server ends by itself once every task has ended."""
    from conftest import sacct, wait_done

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    prepare_store(uri, "many")
    folder = tmp_path / "tracking"
    server = ChainServer("auto", uri, folder, "slurm", Resources(cpus_per_task=1, mem_gb=1, timeout_min=10),
                         "t2v-test-mlflow", many=True)
    with server:
        res = Resources(cpus_per_task=1, mem_gb=0.5, timeout_min=10, dependency=server.dependency)
        outs = map_tasks(subprocess.check_call,
                         [writer(uri, k, tmp_path / f"r{k}", server.file) for k in range(16)],
                         kind="slurm", folder=tmp_path / "logs", res=res, name="t2v-writers")
        server.serves(o.job_id for o in outs)
    assert all(o.ok for o in outs), [o.error for o in outs if not o.ok]
    script = next((tmp_path / "logs").glob("*_submission.sh")).read_text()
    assert f"#SBATCH --dependency=after:{server.job}" in script
    info = json.loads((folder / "server.json").read_text())
    assert info["uri"].startswith("http://n") and info["job_id"] == server.job  # on a node, by its name
    assert_all_arrived(uri, via=info["uri"])
    rows = wait_done(server.job, timeout=120)  # it watches the array and stops once it is over
    assert rows[-1]["state"] == "COMPLETED", sacct(server.job)
    assert read_server(folder / "server.json")["state"] == "stopped"


def test_a_local_sweep_logs_through_its_own_server_and_stops_it(prepared, tmp_path):
    from conftest import t2v
    from test_train import TINY

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    r = t2v("train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", tmp_path / "sw",
            "--preset", "debug_cpu", "--max-steps", "2", *sum((["--set", s] for s in TINY), []),
            "--sweep", "lr_g=1e-4,2e-4", "--array-parallelism", "2", "--tracking-uri", uri)
    served = read_server(tmp_path / "sw/tracking/server.json")
    assert served["state"] == "stopped" and served["uri"].startswith("http://127.0.0.1:")
    assert f"MLflow server for this submission: {served['uri']}" in r.stderr
    c = MlflowClient(uri)
    kids = [k for k in c.search_runs([c.get_experiment_by_name("text2video").experiment_id])
            if "mlflow.parentRunId" in k.data.tags]
    assert len(kids) == 2 and {k.data.tags["t2v.tracking"] for k in kids} == {served["uri"]}
    for k in kids:
        assert [m.step for m in c.get_metric_history(k.info.run_id, "loss_G")] == [1, 2]
        assert k.info.status == "FINISHED"
    # Its points compared by their clips, on the parent run (written through the same server).
    parent = (tmp_path / "sw/mlflow_run_id").read_text().strip()
    assert {a.path for a in c.list_artifacts(parent, "compare")} >= {
        "compare/step_000002.gif", "compare/step_000002.mp4", "compare/summary.csv"}
    import csv

    rows = list(csv.DictReader(open(tmp_path / "sw/compare/summary.csv")))
    assert [(r["run"], r["lr_g"], r["step"]) for r in rows] == [("lr_g-1e-4", "0.0001", "2"), ("lr_g-2e-4", "0.0002", "2")]
    assert all(float(r["loss_G"]) == c.get_run(r["mlflow_run_id"]).data.metrics["loss_G"] for r in rows)
    assert "batch" in rows[0] and "MLFLOW_TRACKING_PASSWORD" not in __import__("os").environ
    # The same for any runs, e.g. one point against the whole sweep: each run once, blocks side by side.
    out = t2v("compare", tmp_path / "sw/lr_g-2e-4", tmp_path / "sw", "--out", tmp_path / "cmp.gif", "--samples", "2")
    assert "2 run(s) side by side (differing in lr_g)" in out.stdout and (tmp_path / "cmp.csv").exists()
    rows = list(csv.DictReader(open(tmp_path / "cmp.csv")))
    assert [r["run"] for r in rows] == ["lr_g-2e-4", "lr_g-1e-4"]
    bad = t2v("compare", tmp_path / "nothing", "--out", tmp_path / "x.gif", check=False)
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slurm
def test_a_server_job_stops_when_what_it_serves_is_gone_from_the_queue_and_accounting(slurm, tmp_path):
    """A job id sacct has no record of (purged, say) and squeue doesn't know: not a reason to serve for ever."""
    from jobs.slurm import watch_jobs, watched_over as _watched_over

    assert not _watched_over(tmp_path)  # no watch file yet: the submitter is still submitting
    watch_jobs(tmp_path, ["987654"])
    assert _watched_over(tmp_path)
    job = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 30", "--mem", "100M"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        watch_jobs(tmp_path, ["987654", job])
        assert not _watched_over(tmp_path)  # one still queued or running
    finally:
        subprocess.run(["scancel", job])


def test_one_run_gets_a_server_only_when_asked(prepared, tmp_path):
    from conftest import t2v
    from test_train import TINY

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    args = ["train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--preset", "debug_cpu",
            "--max-steps", "2", *sum((["--set", s] for s in TINY), []), "--tracking-uri", uri]
    t2v(*args, "--run-dir", tmp_path / "plain")  # auto: one writer, straight to the store
    t2v(*args, "--run-dir", tmp_path / "served", "--tracking-server", "on")
    c = MlflowClient(uri)
    tag = {d: c.get_run((tmp_path / d / "mlflow_run_id").read_text().strip()).data.tags["t2v.tracking"]
           for d in ("plain", "served")}
    assert tag["plain"] == uri and not (tmp_path / "plain/tracking").exists()
    assert tag["served"] == read_server(tmp_path / "served/tracking/server.json")["uri"] != uri
    r = t2v(*args, "--run-dir", tmp_path / "x", "--tracking-server", "on", "--no-wait", check=False)
    assert r.returncode == 2 and "needs --executor slurm" in r.stderr


@pytest.mark.slurm
def test_a_preempted_server_job_requeues_and_its_writers_lose_nothing(slurm, tmp_path):
    """The server job gets the preemption signal: it marks itself restarting and requeues; a
    writer meanwhile logs to the store, then finds the requeued server at its new address."""
    from conftest import sacct, wait_done

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    prepare_store(uri, "many")
    folder, run_dir = tmp_path / "tracking", tmp_path / "run"
    run_dir.mkdir()

    def wait_state(state, other_than=None):
        deadline = time.time() + 120
        while time.time() < deadline:
            info = read_server(folder / "server.json") or {}
            if info.get("state") == state and info.get("uri") != other_than:
                return info
            time.sleep(0.5)
        raise AssertionError(f"server.json never {state}: {info}; {sacct(server.job)}")

    with ChainServer("on", uri, folder, "slurm", Resources(cpus_per_task=1, mem_gb=1, timeout_min=10),
                     "t2v-test-mlflow") as server:
        first = wait_state("serving")
        t = Tracker(uri, "many", run_dir, {"k": 1}, {}, server_file=server.file)
        t.RECHECK_S = 0
        for step in (1, 2, 3):
            t.metrics(step, {"loss_G": step})
        assert t.uri == first["uri"]
        subprocess.run(["scancel", "--signal=USR2", server.job], check=True)
        wait_state("restarting")
        for step in (4, 5, 6):
            t.metrics(step, {"loss_G": step})
        assert t.uri == uri  # the store itself while the job is away
        second = wait_state("serving", other_than=first["uri"])
        for step in (7, 8, 9):
            t.metrics(step, {"loss_G": step})
        assert t.uri == second["uri"] and second["job_id"] == server.job
        t.finish()
    # Nothing left to serve (no jobs named): it stops at its next look at the watch file.
    rows = wait_done(server.job, timeout=120)
    assert [r["state"] for r in rows] == ["REQUEUED", "COMPLETED"], rows
    c = MlflowClient(uri)
    assert [m.step for m in c.get_metric_history(t.run_id, "loss_G")] == list(range(1, 10))


def test_a_sweep_dry_run_shows_its_server_job_and_the_dependency_on_it(prepared, tmp_path):
    from conftest import t2v

    r = t2v("train", "--data", prepared / "frames", "--vocab", prepared / "vocab", "--run-dir", tmp_path / "sw",
            "--preset", "debug_cpu", "--sweep", "lr_g=1e-4,2e-4", "--executor", "slurm", "--dry-run",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    server, array = r.stdout.split("#SBATCH --array=")
    assert "#SBATCH --job-name=t2v-sweep-mlflow" in server and "#SBATCH --cpus-per-task=1" in server
    assert "#SBATCH --dependency='after:<MLflow server job id>'" in array
    assert not (tmp_path / "sw/tracking").exists() and not (tmp_path / "mlruns").exists()  # nothing started


def http(url: str, method="GET", body=None, auth=None) -> int:
    """A plain HTTP client (urllib): the status code of one request."""
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def listening(port: int) -> list[str]:
    """The local addresses (IPv4, dotted) that a socket listens on at `port`, from /proc/net/tcp."""
    import socket
    import struct

    out = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
            out.append(socket.inet_ntoa(struct.pack("<I", int(addr, 16))))
    return out


def test_the_pipeline_server_answers_only_its_owner(tmp_path):
    """basic-auth: the submission's password in a 0600 file and in its tasks' environment;
    without it a plain HTTP client can neither create a run nor read a metric."""
    import os
    import stat

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    exp = prepare_store(uri, "many")
    folder = tmp_path / "tracking"
    with LocalServer(uri, folder) as server:
        creds = json.loads((folder / "credentials.json").read_text())
        assert stat.S_IMODE((folder / "credentials.json").stat().st_mode) == 0o600
        assert stat.S_IMODE((folder / "auth.ini").stat().st_mode) == 0o600
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == creds["password"]  # what its tasks inherit
        c = MlflowClient(server.uri)  # the owner: MLflow's client reads the environment
        run = c.create_run(exp).info.run_id
        c.log_metric(run, "loss_G", 0.5, step=1)
        api = f"{server.uri}/api/2.0/mlflow"
        history = f"{api}/metrics/get-history?run_id={run}&metric_key=loss_G"
        create = dict(url=f"{api}/runs/create", method="POST", body={"experiment_id": exp})
        assert http(**create) == 401 and http(history) == 401 and http(f"{api}/runs/get?run_id={run}") == 401
        assert http(**create, auth=(creds["username"], "guess")) == 401
        assert http(history, auth=(creds["username"], creds["password"])) == 200
        assert http(**create, auth=(creds["username"], creds["password"])) == 200
        assert http(f"{server.uri}/health") == 200  # what tasks poll to find it
        # Never on a command line (any process of the server's session) or in its log.
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        session = []
        for p in pids:
            try:
                if os.getsid(int(p)) == server.proc.pid:
                    session.append(open(f"/proc/{p}/cmdline", "rb").read())
            except OSError:
                continue
        assert session and not any(creds["password"].encode() in cmd for cmd in session)
        assert creds["password"] not in (folder / "server.log").read_text()
        assert listening(read_server(folder / "server.json")["port"]) == ["127.0.0.1"]
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ  # this process's environment as it was
    assert [m.value for m in MlflowClient(uri).get_metric_history(run, "loss_G")] == [0.5]


def test_a_node_server_listens_on_its_nodes_address_only(tmp_path):
    """The SLURM form's binding (`serve` passes the node's name): that name's address, not 0.0.0.0."""
    import socket

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    prepare_store(uri, "many")
    host = socket.gethostname()
    proc = start(uri, tmp_path / "tracking", public_host=host)
    try:
        info = read_server(tmp_path / "tracking/server.json")
        assert info["uri"] == f"http://{host}:{info['port']}"
        assert listening(info["port"]) == [socket.gethostbyname(host)] != ["0.0.0.0"]
    finally:
        stop(proc, tmp_path / "tracking")
