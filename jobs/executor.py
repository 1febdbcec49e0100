"""One interface over submitit's ``local``, ``debug`` and ``slurm`` executors.

``map_tasks(fn, items, ...)`` runs ``fn(item)`` once per item: as a SLURM
array on ``slurm``, as at most ``array_parallelism`` concurrent subprocesses on
``local`` (submitit's LocalExecutor would start them all at once), and
in-process on ``debug`` (pdb opens on failure). It waits with a progress bar
and returns one ``Outcome`` per item; a failed task never stops the others.
``sbatch_script`` renders exactly what a SLURM submission would send, for
``--dry-run``, without needing SLURM installed.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

EXECUTORS = ("local", "debug", "slurm")
Kind = Literal["local", "debug", "slurm"]


@dataclass(frozen=True)
class Resources:
    """What one task asks of the scheduler (ignored where it has no meaning)."""

    partition: Optional[str] = None
    timeout_min: int = 60
    cpus_per_task: int = 2
    mem_gb: float = 8.0
    gpus_per_node: int = 0
    nodes: int = 1
    tasks_per_node: int = 1
    array_parallelism: int = 64
    signal_delay_s: int = 120
    account: Optional[str] = None
    qos: Optional[str] = None
    dependency: Optional[str] = None  # e.g. "afterok:1234": set by `t2v submit` chains


@dataclass
class Outcome:
    item: Any
    job_id: str
    ok: bool
    result: Any = None
    error: str = ""
    log: str = ""


def slurm_parameters(res: Resources, name: str) -> dict:
    """Keyword arguments for submitit's SlurmExecutor.update_parameters."""
    p = dict(job_name=name, time=res.timeout_min, nodes=res.nodes, ntasks_per_node=res.tasks_per_node,
             cpus_per_task=res.cpus_per_task, mem=f"{int(res.mem_gb * 1024)}M",
             signal_delay_s=res.signal_delay_s, array_parallelism=res.array_parallelism)
    if res.gpus_per_node:
        p["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "dependency"):
        if getattr(res, key):
            p[key] = getattr(res, key)
    # A requeued job starts again under the same id, so it writes the same log files.
    # Append (not truncate) keeps what the earlier attempts wrote; sbatch exports it to
    # the job as SLURM_OPEN_MODE, so the srun inside follows it too. Pinned here rather
    # than left to the submitit version or the site's default.
    p["additional_parameters"] = {"open-mode": "append"}
    return p


def sbatch_script(folder, res: Resources, name: str, array_size: int | None = None) -> str:
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor itself renders

    folder = Path(folder).absolute()
    cmd = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=cmd, folder=folder, map_count=array_size,
                               **slurm_parameters(res, name))


def make_executor(kind: Kind, folder, res: Resources, name: str):
    import submitit

    if kind == "slurm":
        ex = submitit.SlurmExecutor(folder=folder)
        ex.update_parameters(**slurm_parameters(res, name))
    elif kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=res.timeout_min, tasks_per_node=res.tasks_per_node)
    elif kind == "debug":
        ex = submitit.DebugExecutor(folder=folder)
    else:
        raise ValueError(f"unknown executor {kind!r}; choose from {', '.join(EXECUTORS)}")
    return ex


def _outcome(item, job) -> Outcome:
    try:
        return Outcome(item, str(job.job_id), True, result=job.results()[0])  # rank 0 of a multi-task job
    except Exception as e:  # noqa: BLE001  (a failed task is data, not a crash)
        # submitit wraps the task's traceback between dashed rulers; keep its last line.
        parts = [p for p in str(e).split("-" * 22) if "Traceback" in p] or [str(e)]
        lines = [line.strip() for line in parts[0].strip().splitlines() if line.strip()]
        return Outcome(item, str(job.job_id), False, error=lines[-1] if lines else type(e).__name__,
                       log=str(getattr(job.paths, "stderr", "")))


def run_job(fn: Callable, *, kind: Kind, folder, res: Resources, name: str, wait: bool = True) -> Outcome:
    """One job (possibly several tasks: nodes x tasks_per_node); returns rank 0's result."""
    ex = make_executor(kind, folder, res, name)
    job = ex.submit(fn)
    print(f"submitted job {job.job_id} ({kind}); logs in {folder}", file=sys.stderr)
    if not wait:
        return Outcome(None, str(job.job_id), True)
    return _outcome(None, job)


def map_tasks(fn: Callable, items: Sequence, *, kind: Kind, folder, res: Resources, name: str,
              desc: str = "tasks", wait: bool = True, poll_s: float = 1.0) -> list[Outcome]:
    from tqdm import tqdm

    items = list(items)
    if not items:
        return []
    ex = make_executor(kind, folder, res, name)
    bar = tqdm(total=len(items), desc=desc, unit="task", disable=not wait)
    if kind == "debug":
        outs = []
        for it in items:  # run now, in this process
            outs.append(_outcome(it, ex.submit(fn, it)))
            bar.update()
        bar.close()
        return outs
    if kind == "slurm":
        jobs = ex.map_array(fn, items)
        print(f"submitted array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks); logs in {folder}",
              file=sys.stderr)
        if not wait:
            return [Outcome(it, str(j.job_id), True, result=None) for it, j in zip(items, jobs)]
        pending = dict(enumerate(jobs))
    else:
        # Local: a sliding window, so N shards on a 2-core box don't start N decoders.
        limit = max(1, min(res.array_parallelism, os.cpu_count() or 1))
        queue, pending, jobs = list(enumerate(items)), {}, [None] * len(items)
    outs: list[Outcome | None] = [None] * len(items)
    while pending or (kind == "local" and queue):
        if kind == "local":
            while queue and len(pending) < limit:
                i, it = queue.pop(0)
                pending[i] = jobs[i] = ex.submit(fn, it)
        for i in [i for i, j in pending.items() if j.done()]:
            outs[i] = _outcome(items[i], pending.pop(i))
            bar.update()
        time.sleep(poll_s if pending else 0)
    bar.close()
    return outs  # type: ignore[return-value]
