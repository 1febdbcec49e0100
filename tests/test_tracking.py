"""Many writers on one SQLite MLflow store: the store and experiment are created once, up front."""

import subprocess
import sys

from mlflow.tracking import MlflowClient

from pipeline.tracking import prepare_store

WRITER = """
import sys
from pathlib import Path
from pipeline.tracking import Tracker
uri, k, run_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
run_dir.mkdir(parents=True)
t = Tracker(uri, "many", run_dir, {"k": k, "lr": 0.1 * k}, {"writer": k})
for step in range(1, 11):
    t.metrics(step, {"loss_G": k + step / 10, "loss_D": -k})
t.finish()
assert t.ok and t.run_id, "tracker failed"
"""


def test_sixteen_concurrent_writers_all_arrive(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    prepare_store(uri, "many")  # what `t2v train/submit` does before submitting
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, str(k), str(tmp_path / f"r{k}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(16)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(errs)
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("many").experiment_id], max_results=100)
    assert len(runs) == 16
    for r in runs:
        k = int(r.data.params["k"])
        hist = sorted((m.step, m.value) for m in c.get_metric_history(r.info.run_id, "loss_G"))
        assert hist == [(s, k + s / 10) for s in range(1, 11)]
        assert r.info.status == "FINISHED" and r.data.tags["writer"] == str(k)
