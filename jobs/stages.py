"""Stage runners: a frozen stage config plus a ``Launch`` (where and how it runs) -> the
stage validated, its plan printed, its tasks run on the executor, its result printed.

The ``t2v`` commands, ``t2v demo`` and the ``t2v submit`` chain (jobs/submit.py) call these
directly. Each returns a ``Ran``: its exit code (0 done, submitted or a dry run; 1 a task
failed; bad input raises ``UserError``) and the ids of the jobs it submitted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from jobs.executor import Outcome, Resources, map_tasks, run_job, sbatch_script, split_note
from jobs.server import ChainServer, with_dependency
from jobs.tasks import EvaluateTask, FramesTask, TrainTask, VocabTask
from pipeline import evaluate, frames, train, vocab
from pipeline.errors import UserError
from pipeline.evaluate import EvalConfig
from pipeline.frames import FramesConfig
from pipeline.rundir import check_out, holder
from pipeline.tracking import Tracker, prepare_store
from pipeline.train import TrainConfig
from pipeline.vocab import VocabConfig


@dataclass(frozen=True)
class Launch:
    """What a command's "where it runs" flags say."""

    executor: str = "local"  # local, debug or slurm (jobs/executor.py)
    res: Resources = Resources()
    dry_run: bool = False  # print the plan (and the sbatch script) only
    wait: bool = True  # False: submit and return (--no-wait)
    tracking_server: str = "auto"  # training: serve a sqlite store through one mlflow server (auto, on, off)
    # What `t2v submit` sets for a stage of its chain; a command leaves them as they are.
    name: str = ""  # the jobs' name; "" is t2v-<stage>
    logs: Path | None = None  # submitit's folder; None is one under the stage's own output
    queued: bool = False  # behind earlier stages not run yet (a SLURM chain, a dry run): its job reads the inputs

    def job(self, stage: str, logs: Path) -> tuple[str, Path]:
        """The jobs' name and log folder: the chain's where it gives them, else the command's."""
        return self.name or f"t2v-{stage}", self.logs or logs


@dataclass(frozen=True)
class Ran:
    """What a runner did. A value rather than an int plus a list to append to: the commands return
    `code`, the chain also needs `jobs` (its next stage's afterok, OUT/submissions.json, the graph)."""

    code: int = 0
    jobs: tuple[str, ...] = ()  # on SLURM each array's id; locally the stage's first job
    tasks: int = 0  # array tasks submitted (or, in a dry run, that would be)


def _ids(outs: list[Outcome], kind: str) -> tuple[str, ...]:
    """On SLURM, several arrays where MaxArraySize split one (afterok on all of them); locally
    one process per task, of which the first names the stage."""
    if kind == "slurm":
        return tuple(sorted({o.job_id.split("_")[0] for o in outs}, key=int))
    return tuple(o.job_id for o in outs[:1])


def run_frames(cfg: FramesConfig, launch: Launch) -> Ran:
    """Validate, print the plan, then one task per missing shard; the manifest once all exist."""
    name, logs = launch.job("frames", Path(cfg.out) / "logs" / "frames")  # submitit names files by job id inside
    if launch.dry_run:
        return _frames_dry_run(cfg, launch, name, logs)
    p = frames.plan(cfg)  # validates the inputs before anything is written
    check_out(cfg.out)
    p = frames.prepare(cfg, p)
    _print_frames_plan(cfg, p)
    outs = map_tasks(FramesTask(cfg), p.todo, kind=launch.executor, folder=logs, res=launch.res,
                     name=name, desc="frames shards", wait=launch.wait)
    ran = Ran(0, _ids(outs, launch.executor), len(outs))
    if launch.executor == "slurm" and not launch.wait:
        print(f"submitted {len(outs)} task(s); the last one to finish writes {cfg.out}/manifest.csv")
        return ran
    failed = [o for o in outs if not o.ok]
    for o in failed:
        print(f"shard {o.item} failed (job {o.job_id}): {o.error}\n  log: {o.log}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} shard(s) failed; run the same command again to redo only those", file=sys.stderr)
        return replace(ran, code=1)
    frames.ensure_manifest(cfg, frames.plan(cfg, verify=False))  # e.g. every task was already done
    manifest = Path(cfg.out) / "manifest.csv"
    counts = frames.summary(manifest)
    print("status counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    print(f"shards in {cfg.out}/shards, manifest at {manifest}")
    return ran


def _print_frames_plan(cfg: FramesConfig, p) -> None:
    print(f"frames: {p.n_labels} labelled samples, {len(p.samples)} after the template filter, "
          f"{len(p.shards)} shard(s) of <= {cfg.shard_size}; {len(p.done)} complete, {len(p.todo)} to do")


def _frames_dry_run(cfg: FramesConfig, launch: Launch, name: str, logs: Path) -> Ran:
    """The plan and, on SLURM, the (first) array's script. A chain's dry run may come before its
    labels exist (toy data is made when it runs): then the script of a single task."""
    todo = []
    if not launch.queued or Path(cfg.labels).exists():
        p = frames.plan(cfg)
        _print_frames_plan(cfg, p)
        todo = p.todo
        if todo:
            print(f"would run shards {todo} on the {launch.executor} executor")
    if launch.executor == "slurm":
        if todo and (note := split_note(len(todo), launch.res)):
            print(note + "; the first:")
        print(sbatch_script(logs, launch.res, name, array_size=len(todo) or None))  # submitit refuses 0
    return Ran(tasks=len(todo))


def run_vocab(cfg: VocabConfig, launch: Launch) -> Ran:
    """Validate the labels (and a pretrained file), print the plan, then one vocab job."""
    plan = "" if launch.queued else _vocab_plan(cfg)  # validate before submitting anything
    if not launch.dry_run:
        check_out(cfg.out)
    if plan:
        print(plan)
    name, logs = launch.job("vocab", Path(cfg.out) / "logs" / "vocab")
    if launch.dry_run:
        if launch.executor == "slurm":
            print(sbatch_script(logs, launch.res, name))
        return Ran()
    # --no-wait returns early on SLURM only: a local job is this command's child.
    o = run_job(VocabTask(cfg), kind=launch.executor, folder=logs, res=launch.res, name=name,
                wait=launch.wait or launch.executor != "slurm", progress=True)
    ran = Ran(0, (o.job_id,))
    if not o.ok:
        print(f"vocab failed (job {o.job_id}): {o.error}\n  log: {o.log}", file=sys.stderr)
        return replace(ran, code=1)
    if o.result is None:  # --no-wait
        print(f"submitted job {o.job_id}")
        return ran
    info = o.result
    excl = ", ".join(f"{r}={v['count']}" for r, v in info["excluded"].items()) or "none"
    print(f"{info['n_tokens']} tokens x {info['dim']} dims, {info['n_samples']} samples; excluded: {excl}")
    if info["no_vector"]:
        print(f"warning: {len(info['no_vector'])} word(s) have no vector in the .vec file: "
              f"{', '.join(info['no_vector'][:10])}", file=sys.stderr)
    print(f"wrote {cfg.out}/embeddings.h5, samples.h5, vocab.json" + (", fasttext.bin" if info["subwords"] else ""))
    return ran


def _vocab_plan(cfg: VocabConfig) -> str:
    """The labels and a pretrained file checked; the plan's line."""
    samples, kept, excluded = vocab.parse(cfg)
    vocab.check_pretrained(cfg)
    src = f"pretrained {cfg.pretrained}" if cfg.pretrained else f"a fastText skipgram (dim {cfg.train_dim}) trained here"
    return (f"vocab: {len(samples)} labelled samples, {len(kept)} with text to condition on ({cfg.mode} mode); "
            f"vectors from {src}")


def _prepare_tracking(cfg) -> None:
    """Store and experiment exist before any task starts (tasks racing to create them fail)."""
    try:
        prepare_store(cfg.tracking_uri, cfg.experiment)
    except Exception as e:  # noqa: BLE001  training still runs without MLflow; it warns then
        print(f"warning: MLflow store {cfg.tracking_uri} not ready ({type(e).__name__}: {str(e)[:200]})",
              file=sys.stderr)


def run_train(cfg: TrainConfig, launch: Launch) -> Ran:
    """Check data, vocab and run dir, print the plan, then one training job (of res.nodes x
    res.tasks_per_node ranks); 1 if it failed or its ranks' weights differ."""
    ranks = launch.res.nodes * launch.res.tasks_per_node
    if not launch.queued:  # else the stages before it write its data and vocab; the chain prepared its store
        plan = _train_plan(cfg, ranks)
        if not launch.dry_run:
            _prepare_tracking(cfg)
        print(plan)
    name, logs = launch.job("train", Path(cfg.run_dir) / "logs")
    if launch.dry_run:
        if launch.executor == "slurm":
            print(sbatch_script(logs, launch.res, name))
        return Ran()
    # One run has one writer (rank 0): it gets a server of its own only when asked ("on"); in a
    # chain it logs through the chain's server, which cfg names already.
    server = ChainServer("on" if launch.tracking_server == "on" else "off", cfg.tracking_uri,
                         Path(cfg.run_dir) / "tracking", launch.executor, _server_resources(launch.res, 1), "t2v-train-mlflow",
                         wait=launch.wait)
    cfg = replace(cfg, tracking_server=server.file or cfg.tracking_server)
    with server:
        o = run_job(TrainTask(cfg), kind=launch.executor, folder=logs, res=with_dependency(launch.res, server.dependency),
                    name=name, wait=launch.wait, progress=True)
        server.serves([o.job_id])
    ran = Ran(0, (o.job_id,))
    if not o.ok:
        print(f"training failed (job {o.job_id}): {o.error}\n  log: {o.log}", file=sys.stderr)
        return replace(ran, code=1)
    if o.result is None:
        return ran
    r = o.result
    same = len(set(r["rank_digests"])) == 1
    print(f"training {r['status']} at step {r['step']}; run dir {r['run_dir']}, MLflow run {r['mlflow_run_id']}")
    print(f"weights on {r['world']} rank(s): " + ("identical" if same else "DIFFERENT: " + ", ".join(r["rank_digests"])))
    print(f"MLflow run id on {r['world']} rank(s): " + ("the same" if len(set(r["rank_run_ids"])) == 1
                                                        else "DIFFERENT: " + ", ".join(map(str, r["rank_run_ids"]))))
    return replace(ran, code=0 if same else 1)


def _train_plan(cfg: TrainConfig, ranks: int) -> str:
    """Config, data, vocab and run dir checked; the plan's line."""
    info = train.check(cfg, ranks)
    if who := holder(cfg.run_dir):
        raise UserError(f"{cfg.run_dir} is in use by another training run ({who}); wait for it to end or stop it")
    resumed = info["resume_from"]  # the file a resume loads, not a torn one
    return (f"train: {info['clips']} clips, conditions of dim {info['cond_dim']} ({info['mode']} mode), "
            f"preset {cfg.preset}, {ranks} rank(s), batch {cfg.batch}, to step {cfg.max_steps}; "
            + (f"resuming from {resumed.name}" if resumed else "new run") + f"; MLflow at {cfg.tracking_uri}")


def run_evaluate(cfg: EvalConfig, launch: Launch) -> Ran:
    """Evaluation as a job (the chain's last stage; `t2v evaluate` runs it in this process)."""
    evaluate.validate(cfg)
    name, logs = launch.job("evaluate", Path(cfg.run_dir) / "logs" / "evaluate")
    if launch.dry_run:
        if launch.executor == "slurm":
            print(sbatch_script(logs, launch.res, name))
        return Ran()
    o = run_job(EvaluateTask(cfg), kind=launch.executor, folder=logs, res=launch.res, name=name, wait=launch.wait,
                progress=True)
    if not o.ok:
        print(f"evaluate failed (job {o.job_id}): {o.error}\n  log: {o.log}", file=sys.stderr)
    return Ran(0 if o.ok else 1, (o.job_id,))


def run_sweep(base: TrainConfig, sweeps, launch: Launch) -> Ran:
    """All points of a sweep as one array, grouped under one MLflow parent run."""
    name = Path(base.run_dir).name
    points = train.sweep_points(replace(base, sweep=name), sweeps)
    for p in points:
        train.check(p)
    print(f"sweep {name}: {len(points)} point(s) -> " + ", ".join(Path(p.run_dir).name for p in points))
    logs = Path(base.run_dir) / "logs"
    res = launch.res
    # One writer for the whole array: its own server (a local child, or a one-CPU SLURM job
    # that the points start after and that stops once they have all ended).
    server = ChainServer(launch.tracking_server, base.tracking_uri, Path(base.run_dir) / "tracking", launch.executor,
                         _server_resources(launch.res, len(points)), "t2v-sweep-mlflow", many=True, dry_run=launch.dry_run,
                         wait=launch.wait)
    if launch.dry_run:
        if launch.executor == "slurm":
            with server:  # prints its script
                if note := split_note(len(points), res):
                    print(note + "; the first:")
                print(sbatch_script(logs, with_dependency(res, server.dependency), "t2v-sweep",
                                    array_size=len(points)))
        return Ran(tasks=len(points))
    parent = _parent_run(base, name)
    points = [replace(p, parent_run_id=parent, tracking_server=server.file) for p in points]
    with server:
        outs = map_tasks(TrainTask(), points, kind=launch.executor, folder=logs,
                         res=with_dependency(res, server.dependency), name="t2v-sweep",
                         desc="sweep points", wait=launch.wait)
        server.serves(o.job_id for o in outs)
    bad = [o for o in outs if not o.ok]
    for o in outs:
        if o.ok and o.result:
            print(f"  {Path(o.result['run_dir']).name}: {o.result['status']} at step {o.result['step']}, "
                  f"MLflow run {o.result['mlflow_run_id']}")
    for o in bad:
        print(f"  {Path(o.item.run_dir).name} failed (job {o.job_id}): {o.error}\n    log: {o.log}", file=sys.stderr)
    print(f"MLflow parent run {parent} groups the sweep (tag t2v.sweep={name})")
    return Ran(1 if bad else 0, _ids(outs, launch.executor), len(outs))


def _server_resources(res: Resources, points: int) -> Resources:
    """One CPU on the sweep's partition, for as long as the throttled array may take."""
    waves = -(-points // max(1, res.array_parallelism))
    return Resources(partition=res.partition, account=res.account, qos=res.qos, cpus_per_task=1, mem_gb=2,
                     timeout_min=res.timeout_min * waves)


def _parent_run(cfg, name: str) -> str:
    """The sweep's MLflow parent run; its id stays in the sweep dir's mlflow_run_id across resubmissions."""
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    _prepare_tracking(cfg)
    t = Tracker(cfg.tracking_uri, cfg.experiment, Path(cfg.run_dir), {"sweep": " ".join(sys.argv[1:])},
                {"t2v.sweep": name, "t2v.role": "sweep-parent"}, run_name=name)
    t.finish()  # a grouping row in the UI; the points carry the work
    return t.run_id or ""
