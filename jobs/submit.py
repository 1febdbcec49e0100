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
from dataclasses import replace
from pathlib import Path

from jobs.cluster import fit, spec_names
from jobs.executor import Resources, map_tasks, run_job, sbatch_script, split_note
from jobs.slurm import watch_jobs
from jobs.tasks import EvaluateTask, FramesTask, TrackingServerTask, TrainTask, VocabTask
from pipeline import evaluate, frames, train
from pipeline.config import from_mapping, read_yaml
from pipeline.errors import UserError
from pipeline.evaluate import EvalConfig
from pipeline.files import write_json
from pipeline.frames import FramesConfig
from pipeline.manifests import load_subset
from pipeline.toydata import make_toy
from pipeline.tracking import default_uri, prepare_store
from pipeline.tracking_server import LocalServer, announce, exported, new_credentials
from pipeline.vocab import VocabConfig

STAGES = ("frames", "vocab", "train", "evaluate")
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
        return _chain(spec, spec_path, stages, stage_res, kind, out, fcfg, vcfg, tcfg, ecfg, server, dry_run)


def _server_resources(spec: dict, stages, kind: str = "local") -> "object":
    """resources.tracking in a spec, else one CPU for as long as the served stages may take."""
    if "tracking" in (spec.get("resources") or {}):
        return _resources(spec, "tracking", None, kind)
    given = spec.get("resources") or {}
    minutes = sum(int((given.get(s) or {}).get("timeout_min", Resources.timeout_min)) for s in stages)
    part = (given.get("train") or {}).get("partition")
    return Resources(cpus_per_task=1, mem_gb=2, timeout_min=minutes, partition=part)


def _chain(spec, spec_path, stages, stage_res, kind, out, fcfg, vcfg, tcfg, ecfg, server, dry_run) -> int:
    dep = None  # afterok on the previous stage's job
    graph = []
    for stage in stages:
        res = with_dependency(stage_res[stage], dep if kind == "slurm" else None)
        if stage in ("train", "evaluate"):
            res = with_dependency(res, server.dependency)  # MLflow writers start after their server
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
            o = run_job(task, kind=kind, folder=logs, res=res, name=name, wait=wait, progress=True)
            if not o.ok:
                print(f"{stage} failed (job {o.job_id}): {o.error}\n  log: {o.log}", file=sys.stderr)
                return 1
            jobs = [o.job_id]
        server.serves(jobs)
        graph.append(f"{stage} job{'s' if len(jobs) > 1 else ''} {','.join(jobs)}" if jobs else
                     f"{stage} (nothing to do)")
        _record(out, {"stage": stage, "jobs": jobs, "executor": kind, "spec": str(Path(spec_path).absolute()),
                      "time": time.time()})
        dep = "afterok:" + ":".join(jobs) if jobs else dep
    print("\ndependency graph:\n  " + "\n  -> ".join(graph))
    return 0
