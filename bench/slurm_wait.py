"""What waiting on SLURM jobs costs: sacct calls, and how late a task that died is noticed.

Needs the local cluster (`containers/slurm-local/cluster.sh up`, then export the SLURM_CONF it
prints). A `sacct` first on PATH logs every call. Two workloads, each waited on two ways in
the same run:

- baseline: submitit's own wait, as `jobs.executor.map_tasks` did before it had `watch`:
  poll `job.done()` on every pending job each second, then `job.results()`;
- ours: `jobs.executor.watch` (via `map_tasks`).

Workloads: N trivial tasks (`abs`), and M tasks that sleep until the array is cancelled with
`scancel` once some run (they end without a result, which only sacct can tell; with 4 CPUs
in the cluster, tasks past the fourth are still pending then). The baseline gives up 300 s
after it started.

    .venv/bin/python bench/slurm_wait.py [--tasks 50] [--cancelled 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.executor import (Outcome, Resources, _outcome, _part_resources, array_parts,  # noqa: E402
                           make_executor, map_tasks, max_array_size)

RES = Resources(cpus_per_task=1, mem_gb=0.25, timeout_min=10)


def baseline(fn, items, folder, name, give_up_s: float = 300) -> list[Outcome | None]:
    """None for a job it still had no outcome for after give_up_s. Submits the same arrays as
    map_tasks (split by MaxArraySize: one array over it is refused outright)."""
    jobs, ids = [], []
    for part in array_parts(len(items), max_array_size(), RES.array_parallelism):
        ex = make_executor("slurm", folder, _part_resources(RES, part, ids), name)
        jobs += ex.map_array(fn, items[part.start:part.stop])
        ids.append(jobs[-1].job_id.split("_")[0])
    pending, outs = dict(enumerate(jobs)), [None] * len(jobs)
    deadline = time.time() + give_up_s
    while pending and time.time() < deadline:
        for i in [i for i, j in pending.items() if j.done()]:
            outs[i] = _outcome(items[i], pending.pop(i))
        time.sleep(1 if pending else 0)
    for j in pending.values():
        j.watcher._registered.discard(j.job_id)  # so ours' run doesn't keep it polling this array
    return outs


def ours(fn, items, folder, name) -> list[Outcome]:
    return map_tasks(fn, items, kind="slurm", folder=folder, res=RES, name=name, wait=True)


def cancel_when_running(name: str, stamp: list) -> None:
    while not subprocess.run(["squeue", "-h", "-n", name, "-t", "R"], capture_output=True, text=True).stdout:
        time.sleep(0.2)
    time.sleep(1)
    subprocess.run(["scancel", "-n", name], check=True)
    stamp.append(time.time())


def measure(how, workload: str, n: int, tmp: Path, log: Path) -> dict:
    name = f"bench-{workload}-{how.__name__}-{os.getpid()}"
    log.write_text("")
    stamp: list[float] = []
    if workload == "cancelled":
        threading.Thread(target=cancel_when_running, args=(name, stamp), daemon=True).start()
        fn, items = time.sleep, [600] * n
    else:
        fn, items = abs, list(range(n))
    t0 = time.time()
    outs = how(fn, items, tmp / name, name)
    t1 = time.time()
    assert all(o.ok for o in outs if o) if workload == "trivial" else not any(o.ok for o in outs if o)
    return {"calls": len(log.read_text().splitlines()), "wall_s": t1 - t0,
            "after_cancel_s": t1 - stamp[0] if stamp else None, "never_reported": sum(o is None for o in outs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--cancelled", type=int, default=6)
    a = ap.parse_args()
    if not shutil.which("sacct") or not os.environ.get("SLURM_CONF"):
        sys.exit("needs the local cluster: containers/slurm-local/cluster.sh up, then export its SLURM_CONF")
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as d:
        tmp = Path(d)
        log, wrapper = tmp / "sacct.log", tmp / "bin" / "sacct"
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {shutil.which("sacct")} "$@"\n')
        wrapper.chmod(0o755)
        os.environ["PATH"] = f"{wrapper.parent}:{os.environ['PATH']}"
        rows = []
        for workload, n in (("trivial", a.tasks), ("cancelled", a.cancelled)):
            for how in (baseline, ours):
                r = measure(how, workload, n, tmp, log)
                rows.append((f"{n} {workload}", how.__name__, r))
                print(f"{n} {workload} tasks, {how.__name__}: {r}", file=sys.stderr)
    print("\n| workload | wait | sacct calls | wall s | s from scancel to the last outcome | tasks never reported |")
    print("|---|---|---|---|---|---|")
    for w, how, r in rows:
        late = f"{r['after_cancel_s']:.1f}" if r["after_cancel_s"] is not None else "-"
        if r["never_reported"]:
            late = f"gave up after {late}"
        print(f"| {w} | {how} | {r['calls']} | {r['wall_s']:.1f} | {late} | {r['never_reported']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
