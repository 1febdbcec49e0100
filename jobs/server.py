"""The MLflow server one submission starts (a `t2v submit` chain, a sweep, a training run
asked to have one), and the dependency its writers wait on.

Its own module because both the stage runners (jobs/stages.py) and the chain (jobs/submit.py,
which calls the runners) use it: imports go submit -> stages -> server, never back.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from jobs.cluster import fit
from jobs.executor import Resources, run_job, sbatch_script
from jobs.slurm import watch_jobs
from jobs.tasks import TrackingServerTask
from pipeline.errors import UserError
from pipeline.tracking_server import LocalServer, announce, exported, new_credentials


class ChainServer:
    """The MLflow server of one submission (pipeline/tracking_server.py), or none.

    `mode` "auto" serves a SQLite store whenever several jobs may write to it at once: every
    SLURM submission and every sweep ("on" forces it, "off" writes to the store directly).
    On SLURM it is a one-CPU job: the writers wait for it to start (`dependency`) and it
    stops once every job passed to `serves` has ended; locally it is a child process.
    """

    def __init__(self, mode: str, store_uri: str, folder: Path, kind: str, res=None, name: str = "t2v-mlflow",
                 many: bool = False, writers: bool = True, dry_run: bool = False, wait: bool = True):
        if mode not in ("auto", "on", "off"):
            raise UserError(f"tracking server: {mode!r} is not one of auto, on, off")
        sqlite = store_uri.startswith("sqlite:///")
        if mode == "on" and not sqlite:
            raise UserError(f"tracking server 'on' serves a sqlite:/// store; {store_uri} is served already")
        self.wanted = writers and sqlite and kind != "debug" and (
            mode == "on" or (mode == "auto" and (kind == "slurm" or many)))
        if self.wanted and kind == "local" and not wait:  # a local server stops as the command returns
            if mode == "on":
                raise UserError("--tracking-server on with --no-wait needs --executor slurm: a local server "
                                "would stop as this command returns")
            self.wanted = False
        if self.wanted and kind == "slurm":
            res = fit(res or Resources(cpus_per_task=1, mem_gb=2), f"{name} (MLflow server)")
        self.store, self.folder, self.kind, self.res, self.name = store_uri, Path(folder), kind, res, name
        self.file = str(self.folder / "server.json") if self.wanted else ""
        self.dry_run = dry_run
        self.job, self.local, self.jobs, self.env = None, None, [], None

    def __enter__(self) -> "ChainServer":
        if not self.wanted:
            return self
        if self.dry_run:
            if self.kind == "slurm":
                print(f"\n# ---- MLflow server (serves {self.store}) ----")
                print(sbatch_script(self.folder / "logs", self.res, self.name))
            return self
        if self.kind == "slurm":
            # The server's password, new for this submission; the jobs submitted from here on
            # carry it in their environment (sbatch copies ours), none on a command line.
            self.env = exported(new_credentials(self.folder)).__enter__()
            res = self.res
            # Requeued on each timeout, so a limit shorter than the chain costs a restart, not data.
            try:
                self.job = run_job(TrackingServerTask(self.store, str(self.folder)), kind="slurm",
                                   folder=self.folder / "logs", res=res, name=self.name, wait=False,
                                   max_num_timeout=100).job_id
            except BaseException:
                self.env.__exit__()  # `with` calls no __exit__ when __enter__ fails
                raise
            announce(self.folder, self.job)
            print(f"MLflow server for this submission: job {self.job}; its address will be in {self.file}",
                  file=sys.stderr)
        else:
            self.local = LocalServer(self.store, self.folder).__enter__()
            print(f"MLflow server for this submission: {self.local.uri} (store {self.store})", file=sys.stderr)
        return self

    @property
    def dependency(self) -> str | None:
        if self.dry_run and self.wanted and self.kind == "slurm":
            return "after:<MLflow server job id>"
        return f"after:{self.job}" if self.job else None  # "after": once it has started

    def serves(self, jobs) -> None:
        self.jobs += [str(j).split("_")[0] for j in jobs]

    def __exit__(self, *exc) -> None:
        if self.job:  # also after a failed submission: the server stops once what was submitted ends
            watch_jobs(self.folder, sorted(set(self.jobs), key=int))
        if self.local:
            self.local.__exit__(*exc)
        if self.env:
            self.env.__exit__(*exc)


def with_dependency(res, extra: str | None):
    """Resources whose dependency also waits for `extra` (comma: both must hold)."""
    if not extra:
        return res
    return replace(res, dependency=",".join(d for d in (res.dependency, extra) if d))
