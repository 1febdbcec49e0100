"""Stage runners: a frozen stage config plus a ``Launch`` (where and how it runs) -> the
stage validated, its plan printed, its tasks run on the executor, its result printed.

The ``t2v`` commands and ``t2v demo`` call these directly. Each returns an exit code:
0 done (or submitted, or a dry run), 1 a task failed; bad input raises ``UserError``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from jobs.executor import Resources, map_tasks, run_job, sbatch_script, split_note
from jobs.submit import ChainServer, with_dependency
from jobs.tasks import FramesTask, TrainTask, VocabTask
from pipeline import frames, train, vocab
from pipeline.checkpoints import newest_checkpoint
from pipeline.errors import UserError
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


def run_frames(cfg: FramesConfig, launch: Launch) -> int:
    """Validate, print the plan, then one task per missing shard; the manifest once all exist."""
    p = frames.plan(cfg)  # validates the inputs before anything is written
    if not launch.dry_run:
        check_out(cfg.out)
        p = frames.prepare(cfg, p)
    print(f"frames: {p.n_labels} labelled samples, {len(p.samples)} after the template filter, "
          f"{len(p.shards)} shard(s) of <= {cfg.shard_size}; {len(p.done)} complete, {len(p.todo)} to do")
    logs = Path(cfg.out) / "logs" / "frames"  # submitit names files by job id inside
    res = launch.res
    if launch.dry_run:
        if p.todo:
            print(f"would run shards {p.todo} on the {launch.executor} executor")
        if launch.executor == "slurm":
            if note := split_note(len(p.todo), res):
                print(note + "; the first:")
            print(sbatch_script(logs, res, "t2v-frames", array_size=len(p.todo)))
        return 0
    outs = map_tasks(FramesTask(cfg), p.todo, kind=launch.executor, folder=logs, res=res,
                     name="t2v-frames", desc="frames shards", wait=launch.wait)
    if launch.executor == "slurm" and not launch.wait:
        print(f"submitted {len(outs)} task(s); the last one to finish writes {cfg.out}/manifest.csv")
        return 0
    failed = [o for o in outs if not o.ok]
    for o in failed:
        print(f"shard {o.item} failed (job {o.job_id}): {o.error}\n  log: {o.log}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} shard(s) failed; run the same command again to redo only those", file=sys.stderr)
        return 1
    frames.ensure_manifest(cfg, frames.plan(cfg, verify=False))  # e.g. every task was already done
    manifest = Path(cfg.out) / "manifest.csv"
    counts = frames.summary(manifest)
    print("status counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    print(f"shards in {cfg.out}/shards, manifest at {manifest}")
    return 0


def run_vocab(cfg: VocabConfig, launch: Launch) -> int:
    """Validate the labels (and a pretrained file), print the plan, then one vocab task."""
    samples, kept, excluded = vocab.parse(cfg)  # validate before submitting anything
    vocab.check_pretrained(cfg)
    if not launch.dry_run:
        check_out(cfg.out)
    src = f"pretrained {cfg.pretrained}" if cfg.pretrained else f"a fastText skipgram (dim {cfg.train_dim}) trained here"
    print(f"vocab: {len(samples)} labelled samples, {len(kept)} with text to condition on ({cfg.mode} mode); "
          f"vectors from {src}")
    logs = Path(cfg.out) / "logs" / "vocab"
    if launch.dry_run:
        if launch.executor == "slurm":
            print(sbatch_script(logs, launch.res, "t2v-vocab"))
        return 0
    (o,) = map_tasks(VocabTask(cfg), [0], kind=launch.executor, folder=logs, res=launch.res, name="t2v-vocab",
                     desc="vocab", wait=launch.wait)
    if not o.ok:
        print(f"vocab failed (job {o.job_id}): {o.error}\n  log: {o.log}", file=sys.stderr)
        return 1
    if o.result is None:  # --no-wait
        print(f"submitted job {o.job_id}")
        return 0
    info = o.result
    excl = ", ".join(f"{r}={v['count']}" for r, v in info["excluded"].items()) or "none"
    print(f"{info['n_tokens']} tokens x {info['dim']} dims, {info['n_samples']} samples; excluded: {excl}")
    if info["no_vector"]:
        print(f"warning: {len(info['no_vector'])} word(s) have no vector in the .vec file: "
              f"{', '.join(info['no_vector'][:10])}", file=sys.stderr)
    print(f"wrote {cfg.out}/embeddings.h5, samples.h5, vocab.json" + (", fasttext.bin" if info["subwords"] else ""))
    return 0


def _prepare_tracking(cfg) -> None:
    """Store and experiment exist before any task starts (tasks racing to create them fail)."""
    try:
        prepare_store(cfg.tracking_uri, cfg.experiment)
    except Exception as e:  # noqa: BLE001  training still runs without MLflow; it warns then
        print(f"warning: MLflow store {cfg.tracking_uri} not ready ({type(e).__name__}: {str(e)[:200]})",
              file=sys.stderr)


def run_train(cfg: TrainConfig, launch: Launch) -> int:
    """Check data, vocab and run dir, print the plan, then one training job (of res.nodes x
    res.tasks_per_node ranks); 1 if it failed or its ranks' weights differ."""
    ranks = launch.res.nodes * launch.res.tasks_per_node
    info = train.check(cfg, ranks)
    if who := holder(cfg.run_dir):
        raise UserError(f"{cfg.run_dir} is in use by another training run ({who}); wait for it to end or stop it")
    if not launch.dry_run:
        _prepare_tracking(cfg)
    resumed = [p for p in newest_checkpoint(cfg.run_dir)[:1] if p]  # the file a resume loads, not a torn one
    print(f"train: {info['clips']} clips, conditions of dim {info['cond_dim']} ({info['mode']} mode), "
          f"preset {cfg.preset}, {ranks} rank(s), batch {cfg.batch}, to step {cfg.max_steps}; "
          + (f"resuming from {resumed[0].name}" if resumed else "new run") + f"; MLflow at {cfg.tracking_uri}")
    logs = Path(cfg.run_dir) / "logs"
    if launch.dry_run:
        if launch.executor == "slurm":
            print(sbatch_script(logs, launch.res, "t2v-train"))
        return 0
    # One run has one writer (rank 0): it gets a server of its own only when asked ("on").
    server = ChainServer("on" if launch.tracking_server == "on" else "off", cfg.tracking_uri,
                         Path(cfg.run_dir) / "tracking", launch.executor, _server_resources(launch.res, 1), "t2v-train-mlflow",
                         wait=launch.wait)
    cfg = replace(cfg, tracking_server=server.file)
    with server:
        o = run_job(TrainTask(cfg), kind=launch.executor, folder=logs, res=with_dependency(launch.res, server.dependency),
                    name="t2v-train", wait=launch.wait, progress=True)
        server.serves([o.job_id])
    if not o.ok:
        print(f"training failed (job {o.job_id}): {o.error}\n  log: {o.log}", file=sys.stderr)
        return 1
    if o.result is None:
        return 0
    r = o.result
    same = len(set(r["rank_digests"])) == 1
    print(f"training {r['status']} at step {r['step']}; run dir {r['run_dir']}, MLflow run {r['mlflow_run_id']}")
    print(f"weights on {r['world']} rank(s): " + ("identical" if same else "DIFFERENT: " + ", ".join(r["rank_digests"])))
    print(f"MLflow run id on {r['world']} rank(s): " + ("the same" if len(set(r["rank_run_ids"])) == 1
                                                        else "DIFFERENT: " + ", ".join(map(str, r["rank_run_ids"]))))
    return 0 if same else 1


def run_sweep(base: TrainConfig, sweeps, launch: Launch) -> int:
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
        return 0
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
    return 1 if bad else 0


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
