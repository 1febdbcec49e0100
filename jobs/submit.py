"""`t2v submit`: run an experiment spec (jobs/*.yaml) stage by stage.

A spec names a data manifest, per-stage configs and per-stage SLURM resources.
Locally the stages run in order and stop at the first failure; on SLURM each
stage is submitted at once with ``afterok`` on the one before (frames is an
array; ``afterok`` on its id waits for every task), so a user can walk away.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

from jobs.cluster import fit, spec_names
from jobs.executor import Resources
from jobs.server import ChainServer, with_dependency
from jobs.stages import Launch, run_evaluate, run_frames, run_train, run_vocab
from pipeline import evaluate, train
from pipeline.config import from_mapping, read_yaml
from pipeline.errors import UserError
from pipeline.evaluate import EvalConfig
from pipeline.files import write_json
from pipeline.frames import FramesConfig
from pipeline.manifests import load_subset
from pipeline.toydata import make_toy
from pipeline.tracking import default_uri, prepare_store
from pipeline.vocab import VocabConfig

STAGES = ("frames", "vocab", "train", "evaluate")
RUNNERS = {"frames": run_frames, "vocab": run_vocab, "train": run_train, "evaluate": run_evaluate}
SPEC_KEYS = ("name", "data_manifest", "vars", "out", "stages", "resources", "tracking")


def load_spec(path) -> dict:
    """The spec, with every key checked: unknown keys, stages and resource values of the wrong
    type are refused here, before any job, rather than accepted or failing inside one."""
    p = Path(path)
    spec = read_yaml(p, "experiment spec")
    unknown = sorted(set(spec) - set(SPEC_KEYS), key=str)
    if unknown:
        raise UserError(f"{p}: unknown key(s) {unknown}; valid: {', '.join(SPEC_KEYS)}")
    for key in ("name", "data_manifest", "out", "stages"):
        if key not in spec:
            raise UserError(f"{p}: missing '{key}'")
    for key in ("stages", "resources", "vars", "tracking"):
        if not isinstance(spec.get(key) or {}, dict):
            raise UserError(f"{p}: '{key}' must be a mapping, got {spec[key]!r}")
    for key in ("name", "out", "data_manifest"):
        if not isinstance(spec[key], str) or not spec[key]:
            raise UserError(f"{p}: '{key}' must be a non-empty string, got {spec[key]!r}")
    unknown = sorted(set(spec["stages"]) - set(STAGES), key=str)
    if unknown:
        raise UserError(f"{p}: unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    unknown = sorted(set(spec.get("resources") or {}) - set(STAGES) - {"tracking"}, key=str)
    if unknown:
        raise UserError(f"{p}: resources for unknown stage(s) {unknown}; known: {', '.join(STAGES)}, tracking")
    for stage in spec.get("resources") or {}:
        _resources(spec, stage, None)
    return spec


def _resources(spec: dict, stage: str, dependency: str | None, kind: str = "local"):
    """resources.<stage> of a spec as Resources; on SLURM checked against the cluster."""
    given = (spec.get("resources") or {}).get(stage) or {}
    res = from_mapping(Resources, given, f"resources.{stage}", hidden=("asked",))
    for key in ("timeout_min", "cpus_per_task", "mem_gb", "nodes", "tasks_per_node", "array_parallelism"):
        if key in given and getattr(res, key) is not None and getattr(res, key) <= 0:
            raise UserError(f"resources.{stage}.{key} must be > 0, not {getattr(res, key)}")
    res = replace(res, asked=frozenset(given), dependency=dependency or res.dependency)
    return fit(res, stage, spec_names(stage)) if kind == "slurm" else res


def _eval_config(given: dict, out: Path):
    """stages.evaluate in a spec: EvalConfig keys; the evaluator sees OUT/frames plus any `data` given."""
    cfg = from_mapping(EvalConfig, given, "stages.evaluate", dict(run_dir=out / "run"))
    return replace(cfg, data=(out / "frames", *(Path(d).absolute() for d in cfg.data)))



def _record(out: Path, entry: dict) -> None:
    """Append to OUT/submissions.json (what `t2v status` reads), atomically."""
    path = out / "submissions.json"
    subs = json.loads(path.read_text()) if path.exists() else []
    write_json(path, subs + [entry])


def submit(spec_path, stages=None, executor: str = "local", dry_run: bool = False) -> int:
    spec = load_spec(spec_path)
    if stages is not None:
        unknown = [s for s in stages if s not in spec["stages"]]
        if unknown or not stages:
            raise UserError(f"--stages: unknown stage(s) {unknown or stages}; this spec has "
                            f"{', '.join(s for s in STAGES if s in spec['stages'])}")
    stages = [s for s in STAGES if s in (stages or spec["stages"])]
    # Every stage's request checked against the cluster before the first job is submitted.
    stage_res = {s: _resources(spec, s, None, executor) for s in stages}
    env = {**{k: str(v) for k, v in (spec.get("vars") or {}).items()}, **os.environ}
    manifest = load_subset(spec["data_manifest"], env=env, resolve_paths=True)
    out = Path(spec["out"]).absolute()
    labels = [Path(manifest["labels"][k]).absolute() for k in ("train", "validation") if k in manifest["labels"]]
    videos = Path(manifest["videos"]).absolute()
    if "generate" in manifest and not labels[0].exists() and not dry_run:
        make_toy(labels[0].parent.parent, **manifest["generate"])
    cfg = spec["stages"]
    fcfg = from_mapping(FramesConfig, cfg.get("frames"), "stages.frames",
                        dict(labels=labels[0], videos=videos, out=out / "frames",
                             templates=tuple(manifest.get("templates", ()))))
    vcfg = from_mapping(VocabConfig, cfg.get("vocab"), "stages.vocab", dict(labels=tuple(labels), out=out / "vocab"))
    if not isinstance(cfg.get("train") or {}, dict):
        raise UserError(f"stages.train: expected a mapping of keys to values, got {cfg['train']!r}")
    tc = dict(cfg.get("train") or {})
    trk = dict(spec.get("tracking") or {})
    bad = set(trk) - {"uri", "experiment", "server"}
    if bad:
        raise UserError(f"tracking: unknown key(s) {sorted(bad)}; valid: experiment, server, uri")
    kind = executor
    server = ChainServer(str(trk.get("server", "auto")), trk.get("uri") or default_uri(Path.cwd()),
                         out / "tracking", kind, _server_resources(spec, stages, kind), f"t2v-{spec['name']}-mlflow",
                         writers=bool({"train", "evaluate"} & set(stages)), dry_run=dry_run)
    sets = [str(s) for s in tc.pop("set", [])] + [f"{k}={v}" for k, v in tc.items() if k != "preset"]
    sets += [f"tracking_uri={server.store}", f"experiment={trk.get('experiment', spec['name'])}"]
    if server.file:
        sets.append(f"tracking_server={server.file}")
    tcfg = train.build_config(out / "frames", out / "vocab", out / "run", tc.get("preset", "default"), sets)
    ecfg = _eval_config(cfg.get("evaluate") or {}, out)
    if "evaluate" in stages:
        evaluate.validate(ecfg)
    if "train" in stages and not dry_run:
        prepare_store(tcfg.tracking_uri, tcfg.experiment)  # once, before any job could race on it
    print(f"experiment {spec['name']}: stages {' -> '.join(stages)} on the {kind} executor; outputs in {out}")
    with server:
        if server.job:
            _record(out, {"stage": "tracking", "jobs": [server.job], "executor": kind,
                          "spec": str(Path(spec_path).absolute()), "time": time.time()})
        cfgs = {"frames": fcfg, "vocab": vcfg, "train": tcfg, "evaluate": ecfg}
        return _chain(spec, spec_path, stages, stage_res, kind, out, cfgs, server, dry_run)


def _server_resources(spec: dict, stages, kind: str = "local") -> "object":
    """resources.tracking in a spec, else one CPU for as long as the served stages may take."""
    if "tracking" in (spec.get("resources") or {}):
        return _resources(spec, "tracking", None, kind)
    given = spec.get("resources") or {}
    minutes = sum(int((given.get(s) or {}).get("timeout_min", Resources.timeout_min)) for s in stages)
    part = (given.get("train") or {}).get("partition")
    return Resources(cpus_per_task=1, mem_gb=2, timeout_min=minutes, partition=part)


def _chain(spec, spec_path, stages, stage_res, kind, out, cfgs, server, dry_run) -> int:
    """Each stage through its runner (jobs/stages.py), as its own command would run it, but
    named after the spec, logged under OUT/logs/STAGE and, on SLURM, behind the stage before."""
    dep = None  # afterok on the previous stage's jobs
    graph = []
    for stage in stages:
        res = with_dependency(stage_res[stage], dep if kind == "slurm" else None)
        if stage in ("train", "evaluate"):
            res = with_dependency(res, server.dependency)  # MLflow writers start after their server
        if dry_run and kind == "slurm":
            print(f"\n# ---- {stage} ----")
        # On SLURM (and in a dry run) every stage is queued before the one before it has run, so
        # its job, not this process, reads its inputs. Training logs through the chain's server.
        launch = Launch(executor=kind, res=res, dry_run=dry_run, wait=kind != "slurm", tracking_server="off",
                        name=f"t2v-{spec['name']}-{stage}", logs=out / "logs" / stage,
                        queued=dry_run or kind == "slurm")
        ran = RUNNERS[stage](cfgs[stage], launch)
        if ran.code:
            return ran.code
        if dry_run:
            graph.append(stage + (f" [array of {ran.tasks}]" if ran.tasks else "")
                         + (f" after {graph[-1].split()[0]}" if graph else ""))
            dep = f"afterok:<{stage} job id>"
            continue
        jobs = list(ran.jobs)
        server.serves(jobs)
        graph.append(f"{stage} job{'s' if len(jobs) > 1 else ''} {','.join(jobs)}" if jobs else
                     f"{stage} (nothing to do)")
        _record(out, {"stage": stage, "jobs": jobs, "executor": kind, "spec": str(Path(spec_path).absolute()),
                      "time": time.time()})
        dep = "afterok:" + ":".join(jobs) if jobs else dep
    print("\ndependency graph:\n  " + "\n  -> ".join(graph))
    return 0
