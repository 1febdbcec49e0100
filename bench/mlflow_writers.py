"""N processes write runs to one SQLite MLflow store at once: fresh store vs one prepared first.

    .venv/bin/python bench/mlflow_writers.py [--writers 16] [--metrics 20]

A fresh store makes every writer run the schema migrations and create the experiment;
`t2v` prepares both once in the submitting process (pipeline/tracking.py prepare_store).
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


def trial(prepared: bool, writers: int, metrics: int) -> tuple[int, int, float, set]:
    from mlflow.tracking import MlflowClient

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.tracking import prepare_store

    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{d}/mlflow.db"
        if prepared:
            prepare_store(uri, "w")
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, str(k), str(metrics)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for k in range(writers)]
        errs = [p.communicate()[1] for p in procs]
        dt = time.perf_counter() - t0
        ok = sum(p.returncode == 0 for p in procs)
        kinds = {line.split(":", 1)[-1].strip()[:70] for e in errs for line in e.splitlines()
                 if "OperationalError" in line}
        c = MlflowClient(uri)
        exp = c.get_experiment_by_name("w")
        runs = c.search_runs([exp.experiment_id], max_results=1000) if exp else []
        points = sum(len(c.get_metric_history(r.info.run_id, "m")) for r in runs)
        return ok, points, dt, kinds


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--writers", type=int, default=16)
    a.add_argument("--metrics", type=int, default=20)
    a = a.parse_args()
    for prepared in (False, True):
        ok, points, dt, kinds = trial(prepared, a.writers, a.metrics)
        print(f"{'prepared' if prepared else 'fresh':8s} store: {ok}/{a.writers} writers succeeded, "
              f"{points}/{a.writers * a.metrics} metric points arrived, {dt:.1f} s"
              + (f"; errors: {sorted(kinds)}" if kinds else ""))


if __name__ == "__main__":
    main()
