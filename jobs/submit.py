"""`t2v submit`: run an experiment spec (jobs/*.yaml) stage by stage.

A spec names a data manifest, per-stage configs and per-stage SLURM resources.
Locally the stages run in order and stop at the first failure; on SLURM each
stage is submitted at once with ``afterok`` on the one before (frames is an
array; ``afterok`` on its id waits for every task), so a user can walk away.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from pipeline.errors import UserError

STAGES = ("frames", "vocab", "train", "evaluate")


def load_spec(path) -> dict:
    from pipeline.config import read_yaml

    p = Path(path)
    spec = read_yaml(p, "experiment spec")
    for key in ("name", "data_manifest", "out", "stages"):
        if key not in spec:
            raise UserError(f"{p}: missing '{key}'")
    unknown = set(spec["stages"]) - set(STAGES)
    if unknown:
        raise UserError(f"{p}: unknown stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
    return spec


def _resources(spec: dict, stage: str, dependency: str | None):
    from jobs.executor import Resources

    given = dict(spec.get("resources", {}).get(stage) or {})
    valid = {f.name for f in fields(Resources)}
    bad = set(given) - valid
    if bad:
        raise UserError(f"resources.{stage}: unknown key(s) {sorted(bad)}; valid: {', '.join(sorted(valid))}")
    return Resources(**given, dependency=dependency)


def _eval_config(given: dict, out: Path):
    """stages.evaluate in a spec: EvalConfig keys; the evaluator sees OUT/frames plus any `data` given."""
    from pipeline.evaluate import EvalConfig

    valid = {f.name for f in fields(EvalConfig)} - {"run_dir"}
    bad = set(given) - valid
    if bad:
        raise UserError(f"stages.evaluate: unknown key(s) {sorted(bad)}; valid: {', '.join(sorted(valid))}")
    extra = given.pop("data", None) or []
    given = {k: Path(v) if k in ("i3d", "cache") else v for k, v in given.items()}
    return EvalConfig(run_dir=out / "run", data=(out / "frames", *(Path(d).absolute() for d in extra)), **given)


def _record(out: Path, entry: dict) -> None:
    """Append to OUT/submissions.json (what `t2v status` reads), atomically."""
    path = out / "submissions.json"
    subs = json.loads(path.read_text()) if path.exists() else []
    tmp = path.with_name(f"submissions.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(subs + [entry], indent=1))
    os.replace(tmp, path)


def submit(spec_path, stages=None, executor: str = "local", dry_run: bool = False) -> int:
    from jobs.executor import map_tasks, run_job, sbatch_script, split_note
    from jobs.tasks import EvaluateTask, FramesTask, TrainTask, VocabTask
    from pipeline import frames, train
    from pipeline.frames import FramesConfig
    from pipeline.manifests import load_subset
    from pipeline.tracking import default_uri
    from pipeline.vocab import VocabConfig

    spec = load_spec(spec_path)
    stages = [s for s in STAGES if s in (stages or spec["stages"])]
    env = {**{k: str(v) for k, v in (spec.get("vars") or {}).items()}, **os.environ}
    manifest = load_subset(spec["data_manifest"], env=env, resolve_paths=True)
    out = Path(spec["out"]).absolute()
    labels = [Path(manifest["labels"][k]).absolute() for k in ("train", "validation") if k in manifest["labels"]]
    videos = Path(manifest["videos"]).absolute()
    if "generate" in manifest and not labels[0].exists() and not dry_run:
        from pipeline.toydata import make_toy

        make_toy(labels[0].parent.parent, **manifest["generate"])
    cfg = spec["stages"]
    fcfg = FramesConfig(labels=labels[0], videos=videos, out=out / "frames",
                        templates=tuple(manifest.get("templates", ())), **(cfg.get("frames") or {}))
    vcfg = VocabConfig(labels=tuple(labels), out=out / "vocab", **(cfg.get("vocab") or {}))
    tc = dict(cfg.get("train") or {})
    sets = [str(s) for s in tc.pop("set", [])] + [f"{k}={v}" for k, v in tc.items() if k != "preset"]
    sets += [f"tracking_uri={(spec.get('tracking') or {}).get('uri') or default_uri(Path.cwd())}",
             f"experiment={(spec.get('tracking') or {}).get('experiment', spec['name'])}"]
    tcfg = train.build_config(out / "frames", out / "vocab", out / "run", tc.get("preset", "default"), sets)
    ecfg = _eval_config(cfg.get("evaluate") or {}, out)
    kind = executor
    if "train" in stages and not dry_run:
        from pipeline.tracking import prepare_store

        prepare_store(tcfg.tracking_uri, tcfg.experiment)  # once, before any job could race on it
    print(f"experiment {spec['name']}: stages {' -> '.join(stages)} on the {kind} executor; outputs in {out}")

    dep = None  # afterok on the previous stage's job
    graph = []
    for stage in stages:
        res = _resources(spec, stage, dep if kind == "slurm" else None)
        logs = out / "logs" / stage
        name = f"t2v-{spec['name']}-{stage}"
        if dry_run:
            n = len(frames.plan(fcfg).todo) if stage == "frames" and fcfg.labels.exists() else None
            graph.append(f"{stage}" + (f" [array of {n}]" if n else "") + (f" after {graph[-1].split()[0]}" if graph else ""))
            if kind == "slurm":
                print(f"\n# ---- {stage} ----")
                if stage == "frames" and n and (note := split_note(n, res)):
                    print(f"# {note}; the first:")
                print(sbatch_script(logs, res, name, array_size=n if stage == "frames" else None))
            dep = f"afterok:<{stage} job id>"
            continue
        wait = kind != "slurm"
        if stage == "frames":
            p = frames.prepare(fcfg)
            outs = map_tasks(FramesTask(fcfg), p.todo, kind=kind, folder=logs, res=res, name=name,
                             desc="frames shards", wait=wait)
            if wait and not all(o.ok for o in outs):
                print("frames failed: " + "; ".join(f"shard {o.item}: {o.error}" for o in outs if not o.ok),
                      file=sys.stderr)
                return 1
            if wait:
                frames.ensure_manifest(fcfg, frames.plan(fcfg, verify=False))
            # On SLURM, several arrays where MaxArraySize split it (afterok on all of them);
            # locally one process per shard, of which the first names the stage as before.
            jobs = sorted({o.job_id.split("_")[0] for o in outs}, key=int) if kind == "slurm" else \
                [o.job_id for o in outs[:1]]
        else:
            task = {"vocab": VocabTask(vcfg), "train": TrainTask(tcfg), "evaluate": EvaluateTask(ecfg)}[stage]
            if stage == "train" and wait:
                train.check(tcfg)
            o = run_job(task, kind=kind, folder=logs, res=res, name=name, wait=wait)
            if not o.ok:
                print(f"{stage} failed (job {o.job_id}): {o.error}\n  log: {o.log}", file=sys.stderr)
                return 1
            jobs = [o.job_id]
        graph.append(f"{stage} job{'s' if len(jobs) > 1 else ''} {','.join(jobs)}" if jobs else
                     f"{stage} (nothing to do)")
        _record(out, {"stage": stage, "jobs": jobs, "executor": kind, "spec": str(Path(spec_path).absolute()),
                      "time": time.time()})
        dep = "afterok:" + ":".join(jobs) if jobs else dep
    print("\ndependency graph:\n  " + "\n  -> ".join(graph))
    return 0
