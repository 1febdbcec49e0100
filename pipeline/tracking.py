"""MLflow for training, on rank 0 only, never allowed to stop training.

The run id lives in ``RUN_DIR/mlflow_run_id`` so a resumed (or requeued) job
logs into the same run; metrics at steps the run already has are skipped, so
redoing steps after a crash never logs a step twice. Every call is guarded: if
the tracking server is down, training warns once and carries on, and the
checkpoints still hold everything.

mlflow is imported inside the functions that call it: the import alone takes
seconds, which every rank and every command that never logs would pay.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import UserError
from .files import write_text
from .tracking_server import artifact_root, resolve

KEY_METRIC = "loss_G"  # logged every tick; its history says where a resumed run left off
# MLflow 3 knows two kinds of experiment: GenAI (traces, evaluations) and model training. The
# kind tag records ours. The UI of MLflow 3.17 no longer reads that tag for its navigation: it
# takes the view from the page address (?workflowType=), else from the browser's last choice,
# else GenAI. So every UI address this pipeline prints names the view too (`ui_url`).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_VIEW = "workflowType=machine_learning"


def default_uri(base: Path) -> str:
    return f"sqlite:///{(Path(base) / 'mlruns' / 'mlflow.db').absolute()}"


def _wait_for_server(uri: str, timeout_s: float = 10.0) -> None:
    """Say what we wait for, and for at most ``timeout_s``: MLflow's client retries a dead server
    for minutes (7 retries with backoff) without a word."""
    print(f"MLflow: asking {uri} (giving up after {timeout_s:g} s)", file=sys.stderr, flush=True)
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        pass  # it answered: a server is there (e.g. one that wants a login for /health)
    except (OSError, ValueError) as e:
        raise UserError(f"no MLflow server answers at {uri} ({getattr(e, 'reason', e)}); start it or pass "
                        "another --tracking-uri") from None
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # it answered: later calls need no patience
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def prepare_store(uri: str, experiment: str, client=None) -> str:
    """Create the store (schema migrations) and the experiment once, in the submitting process.

    Sixteen writers opening a fresh SQLite store at once race on its migrations (15 of 16 died
    in bench/mlflow_writers.py); on a prepared store all 16 logged every metric (docs/benchmarks.md).
    Returns the experiment id.
    """
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith(("http://", "https://")):
        _wait_for_server(uri)
    client = client or MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            exp = client.get_experiment(client.create_experiment(experiment, artifact_location=artifact_root(uri)))
        except Exception:  # noqa: BLE001  created by someone else meanwhile
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
    if EXPERIMENT_KIND[0] not in exp.tags:  # a kind the user picked in the UI stays
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


def ui_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI address of an experiment's runs table (or of one run) in the model-training view."""
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/{page}?{UI_VIEW}"


def run_ui(run_cfg: dict, run_id: str) -> str:
    """Where to see a run: the address of its page (through its chain's server while that
    serves), or for a SQLite store the `mlflow ui` command and then the address."""
    from mlflow.tracking import MlflowClient

    from .tracking_server import resolve

    store = run_cfg.get("tracking_uri") or ""
    uri = resolve(store, run_cfg.get("tracking_server"))
    try:
        exp = MlflowClient(tracking_uri=store if store.startswith("sqlite:") else uri).get_run(run_id).info.experiment_id
    except Exception as e:  # noqa: BLE001
        return f"(run {run_id} not readable at {store}: {type(e).__name__})"
    if uri.startswith("http"):
        served = " (the chain's server: user and password in its tracking/credentials.json)" if uri != store else ""
        return ui_url(uri, exp, run_id) + served
    return f"{ui_url('http://127.0.0.1:5000', exp, run_id)} after `mlflow ui --backend-store-uri {store}`"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


class Tracker:
    """``uri`` is the store. With ``server_file`` (a chain's tracking_server.SERVER_FILE) the
    calls go through that chain's server while it answers, and to the store while it doesn't."""

    RECHECK_S = 60.0  # how often a tracker writing to the store looks for a server again

    def __init__(self, uri: str, experiment: str, run_dir: Path, params: dict, tags: dict,
                 run_name: str | None = None, server_file: str | None = None, server_wait_s: float = 60.0):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail fast, don't stall a step
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.ok, self.warned = True, False
        self.last: dict[str, int] = {}  # per key metric: the newest step the run already has
        self.run_id = None
        self.store, self.server_file, self.checked = uri, server_file, 0.0
        try:
            if uri.startswith("sqlite:///"):
                Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            self._connect(server_wait_s)
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return
        self._call(lambda: self._open(Path(run_dir), experiment, params, tags, run_name))

    def _open(self, run_dir: Path, experiment: str, params: dict, tags: dict, run_name: str | None) -> None:
        """Create the run, or take up the one named in RUN_DIR/mlflow_run_id. Safe to repeat."""
        id_file = run_dir / "mlflow_run_id"
        if id_file.exists():
            self.run_id = id_file.read_text().strip()
            self.last.clear()
            self._last(KEY_METRIC)
            self.client.update_run(self.run_id, status="RUNNING")
            # MLflow refuses to change a logged param (mlflow#7046): a resume that changes one
            # (e.g. a larger max_steps) is recorded as a tag instead.
            old = self.client.get_run(self.run_id).data.params
            for k, v in _flatten(params).items():
                if k in old and old[k] != v:
                    self.client.set_tag(self.run_id, f"t2v.resumed.{k}", f"{old[k]} -> {v}")
            self._params({k: v for k, v in _flatten(params).items() if k not in old})  # new keys, or a cut-off first try
        else:
            exp_id = prepare_store(self.store, experiment, self.client)
            run = self.client.create_run(exp_id, run_name=run_name or run_dir.name,
                                         tags={k: str(v) for k, v in tags.items()})
            self.run_id = run.info.run_id
            write_text(id_file, self.run_id)
            self._params(_flatten(params))
        for k, v in {**tags, "t2v.tracking": self.uri}.items():  # where this attempt logs: server or store
            self.client.set_tag(self.run_id, k, str(v))

    def _params(self, flat: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _connect(self, wait_s: float = 0.0) -> bool:
        """(Re)pick server or store; True if that changed where calls go."""
        from mlflow.tracking import MlflowClient

        self.checked = time.time()
        uri = resolve(self.store, self.server_file, wait_s)
        if getattr(self, "uri", None) == uri:
            return False
        if self.server_file and getattr(self, "uri", None) is not None:
            print(f"MLflow: now logging to {uri}" + (" (the store: no live server)" if uri == self.store else ""),
                  file=sys.stderr)
        self.uri, self.client = uri, MlflowClient(tracking_uri=uri)
        return True

    def _call(self, fn) -> bool:
        """Run fn(); on failure look for another way to the store (a new server, or the store
        itself) and try once more there. False if the call could not be made."""
        if self.server_file and self.uri == self.store and time.time() - self.checked > self.RECHECK_S:
            self._connect()  # a server may be back (e.g. its job was requeued)
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            try:
                if not (self.server_file and self._connect()):
                    raise
                fn()
            except Exception:  # noqa: BLE001
                self._fail(e)
                return False
        self.ok = True
        return True

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
        from mlflow.entities import Metric

        have: list[int] = []
        if not self._call(lambda: have.append(self._last(key))) or step <= have[-1]:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items()]
        if self._call(lambda: self.client.log_batch(self.run_id, metrics=batch)):
            self.last[key] = step

    def artifact(self, path: Path, subdir: str | None = None, max_mb: float | None = None,
                 run_id: str | None = None) -> None:
        """Upload a file (to this run, or to `run_id`: a sweep's parent); one above ``max_mb`` is
        recorded as path + sha256 tags instead (an upload of a multi-GB checkpoint can time out
        and fail the run, mlflow#7564)."""
        if self.run_id is None:
            return
        run_id = run_id or self.run_id
        try:
            size = Path(path).stat().st_size
        except OSError as e:
            self._fail(e)
            return
        if max_mb is not None and size > max_mb * 2**20:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            key = f"t2v.artifact.{subdir or '.'}.{Path(path).name}"
            tags = {f"{key}.path": str(Path(path).absolute()), f"{key}.sha256": h.hexdigest(), f"{key}.bytes": str(size)}
            self._call(lambda: [self.client.set_tag(run_id, k, v) for k, v in tags.items()])
            return
        self._call(lambda: self.client.log_artifact(run_id, str(path), subdir))

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        self._call(lambda: self.client.set_terminated(self.run_id, status=status))
