"""One interface over submitit's ``local``, ``debug`` and ``slurm`` executors.

``map_tasks(fn, items, ...)`` runs ``fn(item)`` once per item: as a SLURM
array on ``slurm``, as at most ``array_parallelism`` concurrent subprocesses on
``local`` (submitit's LocalExecutor would start them all at once), and
in-process on ``debug`` (pdb opens on failure). It waits with a progress bar
and returns one ``Outcome`` per item; a failed task never stops the others.
On SLURM the wait costs one batched ``sacct`` call per poll interval, however
many tasks, and the interval backs off while nothing needs it (``watch``); more
items than the cluster's ``MaxArraySize`` go as several arrays (``array_parts``).
``sbatch_script`` renders exactly what a SLURM submission would send, for
``--dry-run``, without needing SLURM installed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import submitit
from submitit.core.utils import JobPaths
from submitit.slurm.slurm import _make_sbatch_string
from tqdm import tqdm

from jobs.slurm import ENDED, max_array_size, refusal, sacct_states
from pipeline.errors import UserError

EXECUTORS = ("local", "debug", "slurm")
Kind = Literal["local", "debug", "slurm"]


@dataclass(frozen=True)
class Resources:
    """What one task asks of the scheduler (ignored where it has no meaning).

    ``asked`` names the fields the user set; the others are our defaults, which
    ``jobs.cluster.fit`` lowers to what the partition offers instead of refusing them.
    No memory is requested unless asked (``mem_gb`` None): the site's DefMemPerCPU applies."""

    partition: Optional[str] = None
    timeout_min: int = 60
    cpus_per_task: int = 2
    mem_gb: Optional[float] = None
    gpus_per_node: int = 0
    nodes: int = 1
    tasks_per_node: int = 1
    array_parallelism: int = 64
    signal_delay_s: int = 120
    account: Optional[str] = None
    qos: Optional[str] = None
    dependency: Optional[str] = None  # e.g. "afterok:1234": set by `t2v submit` chains
    asked: frozenset = frozenset()


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
             cpus_per_task=res.cpus_per_task, signal_delay_s=res.signal_delay_s,
             array_parallelism=res.array_parallelism)
    if res.mem_gb:
        p["mem"] = f"{int(res.mem_gb * 1024)}M"
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
    if res.dependency:
        # afterok is never met by a FAILED, TIMEOUT or CANCELLED upstream job; without this
        # the job would sit PENDING (DependencyNeverSatisfied) for ever. The per-job flag
        # needs nothing in slurm.conf (DependencyParameters=kill_invalid_depend would do it
        # cluster-wide).
        p["additional_parameters"]["kill-on-invalid-dep"] = "yes"
    return p


@dataclass(frozen=True)
class ArrayPart:
    start: int               # items[start:stop] go in this array, as its tasks 0..stop-start-1
    stop: int
    throttle: int            # its %N
    after: Optional[int]     # index of the part it waits for (afterany), to keep the total throttle


def array_parts(n: int, max_size: Optional[int], parallelism: int) -> list[ArrayPart]:
    """Split n tasks into arrays the cluster accepts (at most max_size tasks each) while at most
    `parallelism` run in all. The parts run side by side in min(parallelism, parts) lanes that
    share the throttle; a part waits for the one before it in its lane. One part if n fits."""
    size = max(1, min(n, max_size or n))
    bounds = [(a, min(a + size, n)) for a in range(0, n, size)]
    lanes = max(1, min(parallelism, len(bounds)))
    return [ArrayPart(a, b, parallelism // lanes + (j % lanes < parallelism % lanes),
                      j - lanes if j >= lanes else None) for j, (a, b) in enumerate(bounds)]


def _part_resources(res: Resources, part: ArrayPart, ids: Sequence[str]) -> Resources:
    deps = [d for d in (res.dependency, f"afterany:{ids[part.after]}" if part.after is not None else None) if d]
    return replace(res, array_parallelism=part.throttle, dependency=",".join(deps) or None)


def split_note(n: int, res: Resources) -> str:
    """A line saying how n tasks will be split, or "" when they go as one array."""
    parts = array_parts(n, max_array_size(), res.array_parallelism)
    if len(parts) == 1:
        return ""
    return (f"{n} tasks are more than one array may hold here (MaxArraySize {max_array_size()}): "
            f"{len(parts)} arrays, at most {res.array_parallelism} tasks running in all")


def sbatch_script(folder, res: Resources, name: str, array_size: int | None = None) -> str:
    """The sbatch script of the (first) array, as SlurmExecutor renders it."""
    folder = Path(folder).absolute()
    cmd = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    if array_size:
        first = array_parts(array_size, max_array_size(), res.array_parallelism)[0]
        res, array_size = _part_resources(res, first, []), first.stop - first.start
    return _make_sbatch_string(command=cmd, folder=folder, map_count=array_size,
                               **slurm_parameters(res, name))


def make_executor(kind: Kind, folder, res: Resources, name: str, max_num_timeout: int = 3):
    if kind == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_num_timeout)
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


def _ended_state(states: dict[str, str], job_id: str) -> str:
    """The job's state if sacct says it is over, else "". Array tasks cancelled while still
    pending are listed as "7_[4-5%6]" or, in a race with the scheduler (seen with SLURM 22.05),
    only under the array's bare id "7": a task with no row of its own falls back to that one."""
    state = states.get(job_id) or (states.get(job_id.split("_")[0], "") if "_" in job_id else "")
    return state if state in ENDED else ""


def _result_names(job) -> list[str]:
    return [JobPaths(job.paths.folder, job_id=job.job_id, task_id=t).result_pickle.name
            for t in range(job.num_tasks)]


def _listing(folders) -> set[str]:
    names = set()
    for folder in folders:
        try:
            folder.chmod(folder.stat().st_mode)  # as submitit does: refreshes an NFS client's cached listing
            names.update(os.listdir(folder))
        except OSError:
            pass
    return names


def watch(pairs: Sequence[tuple[Any, Any]], bar=None, poll_s: float = 1.0, max_poll_s: float = 30.0,
          grace_s: float = 5.0) -> list[Outcome]:
    """Wait for submitit SLURM jobs (``(item, job)`` pairs) and return their outcomes in order.

    A job that ended with a result has left its result pickle(s): one directory listing per
    log folder every ``poll_s`` finds those, with no call to the scheduler. Only ``sacct`` can
    tell that a job ended without one (cancelled, timed out, out of memory, node failure), so
    it is asked about every job at once, first after ``poll_s``, then at intervals that double
    up to ``max_poll_s`` while it reports no such end; one resets the interval, since those
    come in bursts (a bad node, a cancelled array). submitit's own wait polls on its own
    schedule (up to 10 min apart late in a long job) and then waits 15 s per job without a result.
    """
    pending = {i: (item, job, _result_names(job)) for i, (item, job) in enumerate(pairs)}
    folders = {job.paths.folder for _, job in pairs}
    ids = sorted({str(job.job_id).split("_")[0] for _, job in pairs}, key=int)
    outs: list[Outcome | None] = [None] * len(pairs)
    ended: dict[int, tuple[str, float]] = {}  # sacct says over, no result yet: state, when seen
    interval, next_sacct = poll_s, time.time() + poll_s
    while pending:
        names = _listing(folders)
        for i, (item, job, results) in list(pending.items()):
            if all(n in names for n in results):
                outs[i] = _outcome(item, job)
            elif i in ended and time.time() - ended[i][1] > grace_s:  # a result may lag on a shared FS
                log = job.paths.stderr
                why = exception_line(log) if log.exists() else ""
                outs[i] = Outcome(item, str(job.job_id), False, log=str(log),
                                  error=f"ended {ended[i][0]} without a result" + (f": {why}" if why else ""))
            else:
                continue
            del pending[i]
            if bar is not None:
                bar.update()
        if pending and time.time() >= next_sacct:
            states = sacct_states(ids)
            names = _listing(folders)  # a job that ended since the listing above is not news
            news = {i: _ended_state(states, str(job.job_id)) for i, (_, job, results) in pending.items()
                    if i not in ended and not all(n in names for n in results)}
            news = {i: state for i, state in news.items() if state}
            for i, state in news.items():
                ended[i] = (state, time.time())
            interval = poll_s if news else min(interval * 2, max_poll_s)
            next_sacct = time.time() + interval
        if pending:
            time.sleep(poll_s)
    return outs  # type: ignore[return-value]


_EXC = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*")


def exception_line(log: Path) -> str:
    """A task log's exception line (e.g. "UserError: ..."), else its last error-ish line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errs = [line for line in lines if _EXC.match(line)] or [line for line in lines if "error" in line.lower()]
    return errs[-1][:240] if errs else ""


def run_job(fn: Callable, *, kind: Kind, folder, res: Resources, name: str, wait: bool = True,
            max_num_timeout: int = 3, progress: bool = False) -> Outcome:
    """One job (possibly several tasks: nodes x tasks_per_node); returns rank 0's result.
    A checkpointable job that times out is requeued up to `max_num_timeout` times. `progress`:
    while waiting, a bar read from the job's log (jobs/progress.py)."""
    ex = make_executor(kind, folder, res, name, max_num_timeout)
    with refusal(name):
        job = ex.submit(fn)
    print(f"submitted job {job.job_id} ({kind}); logs in {folder}", file=sys.stderr)
    if not wait:
        return Outcome(None, str(job.job_id), True)
    from jobs.progress import LogProgress

    with LogProgress(job.paths.stderr, name.removeprefix("t2v-")) if progress and kind != "debug" \
            else contextlib.nullcontext():
        return watch([(None, job)])[0] if kind == "slurm" else _outcome(None, job)


def map_tasks(fn: Callable, items: Sequence, *, kind: Kind, folder, res: Resources, name: str,
              desc: str = "tasks", wait: bool = True, poll_s: float = 1.0) -> list[Outcome]:
    items = list(items)
    if not items:
        return []
    ex = make_executor(kind, folder, res, name) if kind != "slurm" else None
    bar = tqdm(total=len(items), desc=desc, unit="task", disable=not wait)
    if kind == "debug":
        outs = []
        for it in items:  # run now, in this process
            outs.append(_outcome(it, ex.submit(fn, it)))
            bar.update()
        bar.close()
        return outs
    if kind == "slurm":
        # Several arrays where the cluster's MaxArraySize demands it, else sbatch refuses the
        # whole submission ("Invalid job array specification").
        if note := split_note(len(items), res):
            print(note, file=sys.stderr)
        jobs, ids = [], []
        for part in array_parts(len(items), max_array_size(), res.array_parallelism):
            part_ex = make_executor(kind, folder, _part_resources(res, part, ids), name)
            with refusal(name):
                jobs += part_ex.map_array(fn, items[part.start:part.stop])
            ids.append(jobs[-1].job_id.split("_")[0])
            print(f"submitted array {ids[-1]} ({part.stop - part.start} tasks); logs in {folder}", file=sys.stderr)
        if not wait:
            return [Outcome(it, str(j.job_id), True, result=None) for it, j in zip(items, jobs)]
        outs = watch(list(zip(items, jobs)), bar, poll_s=poll_s)
        bar.close()
        return outs
    # Local: a sliding window, so N shards on a 2-core box don't start N decoders.
    limit = max(1, min(res.array_parallelism, os.cpu_count() or 1))
    queue, pending = list(enumerate(items)), {}
    outs: list[Outcome | None] = [None] * len(items)
    while pending or queue:
        while queue and len(pending) < limit:
            i, it = queue.pop(0)
            pending[i] = ex.submit(fn, it)
        for i in [i for i, j in pending.items() if j.done()]:  # a local job's done() asks its process
            outs[i] = _outcome(items[i], pending.pop(i))
            bar.update()
        time.sleep(poll_s if pending else 0)
    bar.close()
    return outs  # type: ignore[return-value]
