"""N processes write runs to one SQLite MLflow store at once: a fresh store, one prepared
first, and one prepared and served by the pipeline's own `mlflow server`.

    .venv/bin/python bench/mlflow_writers.py [--writers 16] [--metrics 20]

A fresh store makes every writer run the schema migrations and create the experiment;
`t2v` prepares both once in the submitting process (pipeline/tracking.py prepare_store),
and for sweeps and SLURM submissions serves the store through one server
(pipeline/tracking_server.py), so the writers never open the SQLite file themselves.
Time is relative to the prepared-store trial of the same run.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITER = """
import sys, time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
uri, k, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = MlflowClient(uri)
e = c.get_experiment_by_name("w")
exp = e.experiment_id if e else c.create_experiment("w")
r = c.create_run(exp, run_name=f"w{k}")
for s in range(n):
    c.log_batch(r.info.run_id, metrics=[Metric("m", float(s), int(time.time() * 1000), s)])
c.set_terminated(r.info.run_id)
"""


def trial(mode: str, writers: int, metrics: int) -> tuple[int, int, float, set]:
    from mlflow.tracking import MlflowClient

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.tracking import prepare_store
    from pipeline.tracking_server import LocalServer

    with tempfile.TemporaryDirectory() as d:
        uri = target = f"sqlite:///{d}/mlflow.db"
        server = None
        if mode != "fresh":
            prepare_store(uri, "w")
        if mode == "served":
            server = LocalServer(uri, Path(d) / "tracking").__enter__()
            target = server.uri
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, target, str(k), str(metrics)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for k in range(writers)]
        errs = [p.communicate()[1] for p in procs]
        dt = time.perf_counter() - t0
        if server:
            server.__exit__(None, None, None)
        ok = sum(p.returncode == 0 for p in procs)
        kinds = {line.split(":", 1)[-1].strip()[:70] for e in errs for line in e.splitlines()
                 if "OperationalError" in line}
        try:
            c = MlflowClient(uri)
            exp = c.get_experiment_by_name("w")
            runs = c.search_runs([exp.experiment_id], max_results=1000) if exp else []
            points = sum(len(c.get_metric_history(r.info.run_id, "m")) for r in runs)
        except Exception as e:  # noqa: BLE001  a store the racing migrations left unreadable
            points = 0
            kinds.add(f"store unreadable afterwards: {str(e).splitlines()[0][:70]}")
        return ok, points, dt, kinds


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--writers", type=int, default=16)
    a.add_argument("--metrics", type=int, default=20)
    a = a.parse_args()
    base = None
    for mode in ("fresh", "prepared", "served"):
        ok, points, dt, kinds = trial(mode, a.writers, a.metrics)
        base = dt if mode == "prepared" else base
        ratio = f" ({dt / base:.2f}x prepared)" if base and mode != "prepared" else ""
        print(f"{mode:8s} store: {ok}/{a.writers} writers succeeded, "
              f"{points}/{a.writers * a.metrics} metric points arrived, {dt:.1f} s{ratio}"
              + (f"; errors: {sorted(kinds)}" if kinds else ""))


if __name__ == "__main__":
    main()
