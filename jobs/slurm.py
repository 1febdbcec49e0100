"""Everything that asks SLURM's own tools (sacct, squeue, scontrol) or reads a SLURM job's
environment; the only module in the project that does.

``sacct_states`` is the batched poll ``executor.watch`` makes while it waits;
``sacct_rows`` is the full record (every attempt of a requeued job, array tasks
included) that ``t2v status`` and the tests read. ``serve_tracking`` is the body of
a submission's MLflow server job (pipeline/tracking_server.py): it serves until
every job the submitter named in the folder's watch file has ended.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from submitit.core.utils import FailedJobError

from pipeline import tracking_server
from pipeline.errors import UserError
from pipeline.files import write_json

# sacct states after which a job never runs again (PREEMPTED and REQUEUED go back to the queue).
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")
ROW_KEYS = ("id", "state", "exit", "nodes", "reason")  # sacct_rows' dict keys, in sacct's -o order
WATCH_FILE = "watch.json"  # {"jobs": [...]}: the SLURM jobs a submission's MLflow server outlives


def task_ids(jid: str) -> list[str]:
    """sacct's id for one row -> the task ids it stands for ("7_[3-5,9%2]" -> 7_3 7_4 7_5 7_9)."""
    m = re.fullmatch(r"(\d+)_\[([\d,-]+)(?:%\d+)?\]", jid)
    if not m:
        return [jid]
    out = []
    for part in m[2].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m[1]}_{k}" for k in range(int(lo), int(hi or lo) + 1)]
    return out


def sacct_states(job_ids: Sequence[str]) -> dict[str, str]:
    """The newest state of every job and array task under ``job_ids``, from one sacct call
    ({} if sacct fails: the caller just asks again later)."""
    r = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"],
                       capture_output=True, text=True)
    states = {}
    for line in r.stdout.splitlines() if r.returncode == 0 else []:
        jid, _, state = line.partition("|")
        for task in task_ids(jid):
            states[task] = state.split()[0] if state else ""  # "CANCELLED by 0" -> CANCELLED
    return states


def sacct_rows(job: str, since: str = "now-30days", check: bool = False) -> list[dict]:
    """Every attempt (-D) of a job or comma-separated jobs, array tasks included, oldest first,
    as dicts with ROW_KEYS. [] without sacct, unless ``check`` (then a failure raises)."""
    if not shutil.which("sacct") and not check:
        return []
    r = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-S", since, "-j", job,
                        "-o", "JobID,State,ExitCode,NodeList,Reason"], capture_output=True, text=True, check=check)
    return [dict(zip(ROW_KEYS, line.split("|"))) for line in r.stdout.splitlines() if line]


def squeue_reason(job: str) -> str:
    """Why a pending job waits, as squeue says now ("" if it can't tell)."""
    if not shutil.which("squeue"):
        return ""
    r = subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True, text=True)
    return r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""


def queued(job_ids: Sequence[str]) -> bool:
    """True unless squeue positively says none of ``job_ids`` is queued or running."""
    r = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True)
    return bool(r.stdout.strip()) or not (r.returncode == 0 or "Invalid job id" in r.stderr)


@functools.lru_cache(maxsize=None)
def max_array_size() -> int | None:
    """The cluster's MaxArraySize (array indices 0..N-1 are allowed, so N tasks per array), from
    `scontrol show config`; None where there is no scontrol to ask (e.g. --dry-run on a laptop)."""
    if not shutil.which("scontrol"):
        return None
    r = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", r.stdout, re.M)
    return int(m[1]) if r.returncode == 0 and m else None


def requeue_self() -> bool:
    """Inside a SLURM job: put this job (or array task) back in the queue, from rank 0 only.
    False outside SLURM. It restarts under the same id with the same pickled task."""
    if not os.environ.get("SLURM_JOB_ID"):
        return False
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
    if int(os.environ.get("SLURM_PROCID", 0)) == 0:
        subprocess.run(["scontrol", "requeue", job], check=True)
    return True


def node_name() -> str:
    """The name other nodes reach this one by: slurmd's, which is what SLURM's node lists use."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


# ----------------------------------------------------------------------------- the MLflow server job


def watch_jobs(folder, job_ids) -> None:
    """Tell a SLURM-hosted server which jobs it serves; it stops once all of them have ended."""
    write_json(Path(folder) / WATCH_FILE, {"jobs": [str(j) for j in job_ids]})


def watched_over(folder) -> bool:
    """True once every job in the folder's watch file has ended (by sacct, else by squeue)."""
    try:
        ids = json.loads((Path(folder) / WATCH_FILE).read_text())["jobs"]
    except (OSError, ValueError, KeyError):
        return False  # not told yet: the submitter is still submitting
    if not ids:
        return True
    states = sacct_states(ids)  # one batched call; {} if sacct is down (then squeue decides)
    unknown = []
    for jid in ids:
        mine = [s for k, s in states.items() if k == jid or k.startswith(f"{jid}_")]
        if any(s not in ENDED for s in mine):  # a requeued job is PENDING again
            return False
        if not mine:
            unknown.append(jid)
    # No accounting record (lag, or purged): over only if the queue doesn't hold it either.
    return not (unknown and queued(unknown))


def serve_tracking(store_uri: str, folder, poll_s: float = 30.0) -> dict:
    """The server job's body: serve until every watched job has ended, restarting a crashed server.
    A timeout or preemption lands in submitit's handler, which requeues the job; `finally`
    withdraws server.json, so tasks meanwhile write to the store directly."""
    host, job = node_name(), os.environ.get("SLURM_JOB_ID")
    proc = tracking_server.start(store_uri, folder, public_host=host, job_id=job)
    restarts, final = 0, False
    t0 = time.time()
    try:
        while not watched_over(folder):
            time.sleep(poll_s)
            if proc.poll() is not None:
                print(f"mlflow server exited with {proc.returncode}; starting it again", file=sys.stderr)
                proc, restarts = tracking_server.start(store_uri, folder, public_host=host, job_id=job), restarts + 1
        final = True
    finally:  # also on the requeue that submitit's signal handler does: then "restarting"
        tracking_server.stop(proc, folder, final)
    return {"served_s": round(time.time() - t0, 1), "restarts": restarts, "host": host}


@contextlib.contextmanager
def refusal(name: str):
    """sbatch refusing a job (a limit `jobs.cluster.fit` could not see, a site's submit plugin)
    becomes one UserError line carrying sbatch's own message, instead of submitit's traceback
    after it has printed sbatch's stderr."""
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet):
            yield
    except (FailedJobError, subprocess.CalledProcessError) as e:
        lines = [ln.strip() for ln in (str(e) or quiet.getvalue()).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else type(e).__name__)
        raise UserError(f"{name}: sbatch refused the job: {why}") from None
    except OSError as e:  # no sbatch on PATH, a log folder it cannot write
        raise UserError(f"{name}: cannot submit: {e}") from None
    finally:
        sys.stderr.write("".join(ln for ln in quiet.getvalue().splitlines(True) if "sbatch" not in ln))


def client(*cmd: str) -> str | None:
    """stdout of a SLURM client command (scontrol, sacctmgr, ...), or None where it is missing,
    fails or hangs: callers then leave the decision to sbatch."""
    if not shutil.which(cmd[0]):
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def scontrol_show(what: str) -> str | None:
    """`scontrol show WHAT -o` (one line per partition or node), or None without a cluster."""
    return client("scontrol", "show", what, "-o")


def sacctmgr(*args: str) -> str | None:
    """`sacctmgr ARGS`, or None where accounting doesn't answer."""
    return client("sacctmgr", *args)
