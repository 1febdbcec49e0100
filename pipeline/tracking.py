"""MLflow for training, on rank 0 only, never allowed to stop training.

The run id lives in ``RUN_DIR/mlflow_run_id`` so a resumed (or requeued) job
logs into the same run; metrics at steps the run already has are skipped, so
redoing steps after a crash never logs a step twice. Every call is guarded: if
the tracking server is down, training warns once and carries on, and the
checkpoints still hold everything.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

KEY_METRIC = "loss_G"  # logged every tick; its history says where a resumed run left off


def default_uri(base: Path) -> str:
    return f"sqlite:///{(Path(base) / 'mlruns' / 'mlflow.db').absolute()}"


def prepare_store(uri: str, experiment: str, client=None) -> str:
    """Create the store (schema migrations) and the experiment once, in the submitting process.

    Sixteen writers opening a fresh SQLite store at once race on its migrations (15 of 16 died
    in bench/mlflow_writers.py); on a prepared store all 16 logged every metric (README,
    "Hardening"). Returns the experiment id.
    """
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = client or MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    art = None
    if uri.startswith("sqlite:///"):  # keep artifacts beside the store, not in the cwd
        art = (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    try:
        return client.create_experiment(experiment, artifact_location=art)
    except Exception:  # noqa: BLE001  created by someone else meanwhile
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


class Tracker:
    def __init__(self, uri: str, experiment: str, run_dir: Path, params: dict, tags: dict,
                 run_name: str | None = None):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail fast, don't stall a step
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.ok, self.warned = True, False
        self.last: dict[str, int] = {}  # per key metric: the newest step the run already has
        self.run_id = None
        id_file = Path(run_dir) / "mlflow_run_id"
        try:
            from mlflow.tracking import MlflowClient

            if uri.startswith("sqlite:///"):
                Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=uri)
            if id_file.exists():
                self.run_id = id_file.read_text().strip()
                self._last(KEY_METRIC)
                self.client.update_run(self.run_id, status="RUNNING")
                # MLflow refuses to change a logged param (mlflow#7046): a resume that changes one
                # (e.g. a larger max_steps) is recorded as a tag instead.
                old = self.client.get_run(self.run_id).data.params
                for k, v in _flatten(params).items():
                    if k in old and old[k] != v:
                        self.client.set_tag(self.run_id, f"t2v.resumed.{k}", f"{old[k]} -> {v}")
            else:
                exp_id = prepare_store(uri, experiment, self.client)
                run = self.client.create_run(exp_id, run_name=run_name or Path(run_dir).name,
                                             tags={k: str(v) for k, v in tags.items()})
                self.run_id = run.info.run_id
                tmp = id_file.with_suffix(".tmp")
                tmp.write_text(self.run_id)
                os.replace(tmp, id_file)
                from mlflow.entities import Param

                items = [Param(k, v) for k, v in _flatten(params).items()]
                for i in range(0, len(items), 100):
                    self.client.log_batch(self.run_id, params=items[i:i + 100])
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def _fail(self, e: Exception) -> None:
        self.ok = False
        if not self.warned:
            print(f"warning: MLflow unavailable ({type(e).__name__}: {str(e)[:200]}); training carries on, "
                  "checkpoints hold everything", file=sys.stderr)
            self.warned = True

    def _last(self, key: str) -> int:
        if key not in self.last:
            hist = self.client.get_metric_history(self.run_id, key) if self.run_id else []
            self.last[key] = max((m.step for m in hist), default=-1)
        return self.last[key]

    def metrics(self, step: int, values: dict, key: str = KEY_METRIC) -> None:
        """Log ``values`` at ``step`` unless the run already has ``key`` at that step or later."""
        if self.run_id is None:
            return
        try:
            if step <= self._last(key):
                return
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])
            self.last[key] = step
            self.ok = True
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def artifact(self, path: Path, subdir: str | None = None, max_mb: float | None = None) -> None:
        """Upload a file; one above ``max_mb`` is recorded as path + sha256 tags instead (an
        upload of a multi-GB checkpoint can time out and fail the run, mlflow#7564)."""
        if self.run_id is None:
            return
        try:
            size = Path(path).stat().st_size
            if max_mb is not None and size > max_mb * 2**20:
                import hashlib

                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                key = f"t2v.artifact.{subdir or '.'}.{Path(path).name}"
                self.client.set_tag(self.run_id, f"{key}.path", str(Path(path).absolute()))
                self.client.set_tag(self.run_id, f"{key}.sha256", h.hexdigest())
                self.client.set_tag(self.run_id, f"{key}.bytes", str(size))
                return
            self.client.log_artifact(self.run_id, str(path), subdir)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:  # noqa: BLE001
            self._fail(e)
