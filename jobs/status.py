"""`t2v status`: where an experiment stands, from its outputs and from `sacct`.

``t2v submit`` appends every submission to ``OUT/submissions.json`` (stage ->
job ids: several where a big frames array was split). Status reads that, asks
``sacct`` (all attempts, array tasks included) and looks at what each stage
left on disk, then names what failed and why (for a later stage cancelled or
stuck behind it: which upstream task) and prints the one command that
resubmits only what is missing.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from jobs.executor import exception_line
from jobs.slurm import sacct_rows, squeue_reason
from jobs.submit import STAGES, load_spec
from pipeline.checkpoints import newest_step
from pipeline.config import set_flags, to_dict
from pipeline.errors import UserError
from pipeline.tracking_server import read_server
from pipeline.train import build_config, saved_config

SHOW_FAILED = 5  # failed tasks listed per stage; a 1000-task array that failed needs a few, not all
FAILED = ("FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def _ran(row: dict) -> bool:
    return bool(row["nodes"]) and row["nodes"] != "None assigned"


def _last_error(log_dir: Path, job_id: str) -> str:
    """The task's exception line (e.g. "UserError: ..."), else its last error-ish line."""
    for p in sorted(log_dir.glob(f"{job_id}_*_log.err")):
        if line := exception_line(p):
            return f"{line} ({p})"
    return ""


def _done(stage: str, out: Path, spec: dict) -> tuple[bool, str]:
    if stage == "frames":
        shards = len(list((out / "frames" / "shards").glob("shard-*.h5")))
        manifest = (out / "frames" / "manifest.csv").exists()
        return manifest, f"{shards} shard(s) on disk, manifest {'written' if manifest else 'missing'}"
    if stage == "vocab":
        ok = (out / "vocab" / "vocab.json").exists()
        return ok, "vocab.json written" if ok else "no vocab.json"
    if stage == "evaluate":
        e = out / "run" / "eval.json"
        if not e.exists():
            return False, "no run/eval.json"
        r = json.loads(e.read_text())
        return True, f"eval.json at step {r['step']}: cond_acc_seen {r['cond_acc_seen']:.3f} (chance {r['chance']:.3f})"
    want = (spec["stages"].get("train") or {}).get("max_steps")
    step = newest_step(out / "run")
    done = (out / "run" / "generator.pt").exists() and (want is None or step >= int(want))
    return done, f"newest checkpoint step {step}" + (f" of {want}" if want else "")


def _print_jobs(jobs: list[str], log_dir: Path) -> None:
    for job in jobs:
        rows = sacct_rows(job)
        last = {r["id"]: r for r in rows}
        requeued = sum(r["state"] == "REQUEUED" for r in rows)
        for r in last.values():
            why = ""
            if r["state"].split()[0] in FAILED:
                why = ": " + (_last_error(log_dir, r["id"]) or f"exit code {r['exit']}")
            elif r["state"] == "PENDING":
                why = ": " + (squeue_reason(r["id"]) or r["reason"])
            print(f"      {r['id']} {r['state']} on {r['nodes'] or '-'}"
                  + (f" (requeued {requeued}x)" if requeued else "") + why)


def run_status(run_dir: Path) -> int:
    """A training run dir: progress from its checkpoints, its jobs from its logs."""
    cfg = saved_config(run_dir)  # a key added since (d_vid_pool) is the resume command's too
    step = newest_step(run_dir)
    done = (run_dir / "generator.pt").exists() and step >= cfg["max_steps"]
    run_id = (run_dir / "mlflow_run_id").read_text().strip() if (run_dir / "mlflow_run_id").exists() else "-"
    print(f"run {run_dir}: {'done' if done else 'not done'}, newest checkpoint step {step} of "
          f"{cfg['max_steps']}, MLflow run {run_id}")
    grids = sorted((run_dir / "clips").glob("step_*.gif"))
    print(f"  latest clips  {grids[-1] if grids else 'none yet'}")
    if run_id != "-":
        from pipeline.tracking import run_ui

        print(f"  MLflow UI     {run_ui(cfg, run_id)}")
    jobs = sorted({p.name.split("_")[0] for p in (run_dir / "logs").glob("*_log.err")}, key=int)
    _print_jobs(jobs, run_dir / "logs")
    if done:
        return 0
    # The exact command: every key that differs from its preset, so the run dir accepts it.
    base = to_dict(build_config(cfg["data"], cfg["vocab"], cfg["run_dir"], cfg["preset"]))
    sets = set_flags((k, v) for k, v in cfg.items()
                     if k not in ("data", "vocab", "run_dir", "preset", "tracking_server") and base.get(k) != v)
    paths = " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(cfg[k]))}" for k in ("data", "vocab", "run_dir"))
    print(f"\nto resume it:\n  t2v train {paths} --preset {cfg['preset']} {sets}".rstrip())
    return 1


def status(target) -> int:
    target = Path(target)
    if (target / "config.json").exists():
        return run_status(target)
    named = Path(__file__).parent / f"{target}.yaml"
    spec_path = target if target.suffix in (".yaml", ".yml") else (named if named.exists() else None)
    if spec_path is None:
        raise UserError(f"{target}: give a training run dir, an experiment spec (jobs/NAME.yaml) or its NAME")
    spec = load_spec(spec_path)
    out = Path(spec["out"]).absolute()
    subs = json.loads((out / "submissions.json").read_text()) if (out / "submissions.json").exists() else []
    latest = {s["stage"]: s for s in subs}
    first_bad = None
    cause = ""  # the first failed task upstream: what a cancelled or stuck later stage waited on
    print(f"experiment {spec['name']} ({out})")
    if sub := latest.get("tracking"):  # the submission's MLflow server job (pipeline/tracking_server.py)
        rows = sacct_rows(",".join(sub["jobs"]))
        info = read_server(out / "tracking" / "server.json") or {}
        print(f"  tracking  MLflow server job {','.join(sub['jobs'])}: "
              f"{rows[-1]['state'] if rows else 'no sacct record yet'}; {info.get('state', 'no server.json')}"
              + (f" at {info['uri']}" if info.get("state") == "serving" else ""))
    for stage in [s for s in STAGES if s in spec["stages"]]:
        done, what = _done(stage, out, spec)
        sub = latest.get(stage)
        jobs = (sub.get("jobs") or ([sub["job"]] if sub.get("job") else [])) if sub else []
        line = f"  {stage:7s} {'done' if done else 'not done':9s} {what}"
        if jobs:
            rows = sacct_rows(",".join(jobs))
            last = {r["id"]: r for r in rows}  # newest attempt per job/array task
            states: dict[str, int] = {}
            for r in last.values():
                states[r["state"].split()[0]] = states.get(r["state"].split()[0], 0) + 1
            requeued = sum(r["state"] == "REQUEUED" for r in rows)
            line += f"; job{'s' if len(jobs) > 1 else ''} {','.join(jobs)} ({sub['executor']}): " + (
                ", ".join(f"{k}={v}" for k, v in sorted(states.items())) or "no sacct record yet")
            if requeued:
                line += f", requeued {requeued}x"
            print(line)
            failed = []
            for r in last.values():
                state = r["state"].split()[0]
                if state == "CANCELLED" and not _ran(r) and (cause or r["reason"].startswith("Dependency")):
                    # --kill-on-invalid-dep: SLURM cancelled it once its afterok could never be met
                    # (sacct keeps the reason only sometimes; the upstream failure says it all).
                    print(f"      {r['id']} CANCELLED before it started: "
                          + (f"its dependency failed: {cause}" if cause else "while waiting on its dependency"))
                elif state in FAILED:
                    why = _last_error(out / "logs" / stage, r["id"]) or f"exit code {r['exit']}"
                    if len(failed) < SHOW_FAILED:
                        print(f"      {r['id']} {r['state']} on {r['nodes'] or '-'}: {why}")
                    failed.append(f"{r['id']} {state}: {why}")
                elif state == "PENDING":
                    reason = squeue_reason(r["id"]) or r["reason"]
                    stuck = reason == "DependencyNeverSatisfied" and cause
                    print(f"      {r['id']} PENDING: {reason}"
                          + (f" (it never will run: {cause}; scancel {r['id']})" if stuck else ""))
            if len(failed) > SHOW_FAILED:
                print(f"      ... and {len(failed) - SHOW_FAILED} more failed task(s), logs in {out / 'logs' / stage}")
            if failed and not cause:
                cause = f"{stage} task {failed[0]}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
        else:
            print(line + "; not submitted")
        if not done and first_bad is None:
            first_bad = stage
    if first_bad is None:
        print("everything is done")
        return 0
    rest = [s for s in STAGES if s in spec["stages"]]
    rest = rest[rest.index(first_bad):]
    executor = latest.get(first_bad, {}).get("executor", "slurm")
    print(f"\nto resubmit only what is missing:\n  t2v submit {shlex.quote(str(spec_path))} --executor {executor} "
          f"--stages {','.join(rest)}")
    return 1
