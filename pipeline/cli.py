"""The ``t2v`` command line: one subcommand per stage plus helpers.

Parsing turns flags into a stage's frozen config, validates it, prints the
plan, then hands the work to ``jobs.executor``. A ``UserError`` anywhere is
printed as one line (exit 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .errors import UserError

EXAMPLES = {
    "toy-data": """examples:
  t2v toy-data data/toy                      # 200 clips, seed 0
  t2v toy-data data/toy --videos 40 --seed 3
""",
    "frames": """examples:
  t2v frames --labels data/toy/labels/train.json --videos data/toy/videos --out data/frames
  t2v frames --labels sthsth/labels/train.json --videos sthsth/videos --out /scratch/push_ltr \\
      --templates "Pushing [something] from left to right" --executor slurm --partition cpu
  t2v frames ... --subset sthsth_push_ltr     # templates from data_manifests/sthsth_push_ltr.yaml
  t2v frames ... --executor slurm --dry-run   # print the plan and the sbatch script only
Re-running the same command redoes only missing shards; a finished output is left untouched.
""",
    "vocab": """examples:
  t2v vocab --labels data/toy/labels/train.json data/toy/labels/validation.json --out data/vocab
  t2v vocab --labels ... --out data/vocab_sent --mode sentence --dim 100 --corpus extra.txt
  t2v vocab --labels ... --out data/vocab_cc --pretrained cc.en.300.bin   # streamed, not loaded
""",
    "neighbors": """examples:
  t2v neighbors --vocab data/vocab square
  t2v neighbors --vocab data/vocab "penny" -k 10     # works for words never seen in training
""",
    "train": """examples:
  t2v train --data data/frames --vocab data/vocab --run-dir runs/r1 --preset debug_cpu
  t2v train ... --run-dir runs/r1 --max-steps 600          # same run dir: resume and extend
  t2v train ... --set lr_g=1e-4 --set loss=hinge --tracking-uri http://127.0.0.1:5000
  t2v train ... --executor local --tasks-per-node 2         # 2 DDP ranks (gloo on CPU)
  t2v train ... --executor slurm --nodes 2 --tasks-per-node 4 --gpus-per-node 4 --preset paper
  t2v train ... --run-dir runs/sw --sweep lr_g=5e-5,1e-4 --sweep loss=bce,hinge --executor slurm
""",
    "sample": """examples:
  t2v sample --run-dir runs/r1 --text "pushing penny from left to right" --out penny.gif
  t2v sample --run-dir runs/r1 --text "moving red square up" --text "moving red square down" --n 8 --out grid.mp4
  t2v sample --run-id 3f2a... --text "pushing a shoe from left to right" --out samples/   # GIF + MP4 in a dir
Rows are prompts, columns samples; words never seen in training get vectors from fastText subwords.
""",
    "evaluate": """examples:
  t2v evaluate --run-dir runs/r1 --data data/frames                   # the data the run trained on
  t2v evaluate --run-dir runs/r1 --data data/frames data/frames_val   # + clips with held-out objects
  t2v evaluate --run-dir runs/r1 --data data/frames --i3d i3d_torchscript.pt   # adds true FVD
Writes RUN_DIR/eval.json and logs the metrics on the run's MLflow run. The evaluator is trained
once per dataset and cached (by a hash of the manifests) in <first --data>/evaluators/.
""",
    "submit": """examples:
  t2v submit jobs/toy.yaml                               # every stage, in order, locally
  t2v submit jobs/toy.yaml --executor slurm              # chained with afterok; returns at once
  t2v submit jobs/sthsth_push_ltr.yaml --executor slurm --dry-run   # sbatch scripts + graph
  t2v submit jobs/toy.yaml --stages vocab,train
""",
    "status": """examples:
  t2v status jobs/toy.yaml        # states from sacct, what failed and why, the resubmit command
  t2v status toy                  # the same, by experiment name
  t2v status runs/r1              # one training run dir: progress, its jobs, the resume command
""",
    "demo": """examples:
  t2v demo --out demo-output                 # what `make demo` runs
""",
}


def _parser() -> argparse.ArgumentParser:
    from jobs.executor import EXECUTORS, Resources

    top = argparse.ArgumentParser(prog="t2v", description="text2video: a SLURM-native text-to-video GAN pipeline.")
    sub = top.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name, help):
        return sub.add_parser(name, help=help, description=help, epilog=EXAMPLES.get(name),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def executor_flags(p, array=True):
        d = Resources()
        g = p.add_argument_group("where it runs")
        g.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local subprocesses (default), in-process debug (pdb on failure), or SLURM")
        g.add_argument("--dry-run", action="store_true", help="print the plan (and sbatch script) and exit")
        g.add_argument("--no-wait", action="store_true", help="slurm: submit and return without waiting")
        g.add_argument("--partition", default=d.partition)
        g.add_argument("--account", default=d.account)
        g.add_argument("--qos", default=d.qos)
        # Defaults are None so that a value the user gave can be told from ours: on SLURM ours
        # are lowered to what the partition offers, a given one that cannot fit is refused.
        g.add_argument("--timeout-min", type=int, help=f"(default {d.timeout_min}, or the partition's limit)")
        g.add_argument("--cpus-per-task", type=int, help=f"(default {d.cpus_per_task}, or what a node has)")
        g.add_argument("--mem-gb", type=float, help="memory per node (default: none requested, the site's default)")
        if array:
            g.add_argument("--array-parallelism", type=int, default=d.array_parallelism,
                           help="most tasks running at once (local: also capped by CPU count)")

    p = cmd("toy-data", "Generate a small something-something-v2-format dataset (webm + labels).")
    p.add_argument("out", type=Path)
    p.add_argument("--videos", type=int, default=200, help="number of clips, train + validation (default 200)")
    p.add_argument("--seed", type=int, default=0)

    p = cmd("frames", "Decode videos into fixed-size uint8 clips in HDF5 shards, one array task per shard.")
    p.add_argument("--labels", type=Path, required=True, help="something-something labels JSON")
    p.add_argument("--videos", type=Path, required=True, help="directory of <id>.webm files")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--templates", nargs="+", default=(), metavar="T", help="keep only these templates")
    p.add_argument("--subset", metavar="MANIFEST", help="take --templates from a data manifest "
                   "(a path, or a name in data_manifests/, e.g. sthsth_push_ltr)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    p.add_argument("--size", type=int, default=32, help="output height = width in px (default 32)")
    p.add_argument("--stride", type=int, default=None, help="take every STRIDE-th frame from --offset "
                   "instead of spreading --frames evenly over the clip")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=256, help="clips per shard (default 256)")
    p.add_argument("--decoder", choices=("pyav", "skvideo"), default="pyav",
                   help="pyav (default; in-process, faster: see README) or skvideo (ffmpeg subprocess)")
    p.add_argument("--resize", choices=("squash", "center-crop"), default="squash")
    p.add_argument("--compression", choices=("gzip", "lzf", "none"), default="gzip")
    executor_flags(p)

    p = cmd("vocab", "Embed caption words with fastText (trained here, or pretrained .bin/.vec, streamed).")
    p.add_argument("--labels", type=Path, nargs="+", required=True, help="one or more labels JSON files")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", choices=("object", "sentence", "parts"), default="object",
                   help="condition on the object phrase (default), the whole caption, or template and object "
                        "as separate parts (the motion words drive motion, the object words the look)")
    p.add_argument("--pretrained", type=Path, help="a fastText .bin (subwords kept) or .vec file")
    p.add_argument("--dim", type=int, help="vector size when training (default 50); checked against --pretrained")
    p.add_argument("--corpus", type=Path, nargs="+", default=(), help="extra text to train on")
    p.add_argument("--epoch", type=int, default=50)
    p.add_argument("--skip-bad", action="store_true",
                   help="exclude samples with nothing to condition on (counted in vocab.json) instead of failing")
    executor_flags(p, array=False)

    p = cmd("neighbors", "Nearest vocabulary tokens, by cosine similarity, for any word or phrase.")
    p.add_argument("--vocab", type=Path, required=True, help="a `t2v vocab` output dir")
    p.add_argument("word")
    p.add_argument("-k", type=int, default=5)

    p = cmd("train", "Train the conditional video GAN (DDP on any number of ranks, resumable, tracked in MLflow).")
    p.add_argument("--data", type=Path, required=True, help="a `t2v frames` output dir")
    p.add_argument("--vocab", type=Path, required=True, help="a `t2v vocab` output dir")
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoints, clips and config; reuse it to resume")
    p.add_argument("--preset", default="default", help="default, debug_cpu or paper")
    p.add_argument("--max-steps", type=int, help="stop after this many G steps (a larger value extends a run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="train every combination as one array (one run dir and MLflow run per point, "
                        "grouped under a parent run); --array-parallelism throttles it")
    p.add_argument("--array-parallelism", type=int, default=4, help="sweep points running at once")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store in ./mlruns)")
    p.add_argument("--experiment", help="MLflow experiment name (default text2video)")
    p.add_argument("--tracking-server", choices=("auto", "on", "off"), default="auto",
                   help="serve a sqlite store through one `mlflow server` while the jobs run, so their "
                        "writes don't race on the file (auto: for sweeps, not for one run; "
                        "see README, Hardening)")
    executor_flags(p, array=False)
    p.add_argument("--nodes", type=int, help="(default 1)")
    p.add_argument("--tasks-per-node", type=int, help="ranks per node, one per GPU (default 1)")
    p.add_argument("--gpus-per-node", type=int, help="(default 0)")

    p = cmd("sample", "Generate clips for any prompt with a run's EMA generator (grid: prompts x samples).")
    p.add_argument("--run-dir", type=Path, help="a `t2v train` run dir")
    p.add_argument("--run-id", help="or an MLflow run id (its run_dir param is used)")
    p.add_argument("--tracking-uri", help="with --run-id (default: sqlite store in ./mlruns)")
    p.add_argument("--text", action="append", default=[], required=True, help="a prompt; repeat for more rows")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="a step number or checkpoint path (default: newest)")
    p.add_argument("--out", type=Path, required=True, help="FILE.gif, FILE.mp4, or a directory (both)")

    p = cmd("evaluate", "Score a run: conditional accuracy, Frechet distance, diversity, with their ceilings.")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--data", type=Path, nargs="+", default=(), help="frames output(s) with real clips "
                   "(default: the run's training data); add more to score objects training never saw")
    p.add_argument("--checkpoint", help="a step number or checkpoint path (default: newest)")
    p.add_argument("--samples", type=int, default=8, help="generated clips per prompt (default 8)")
    p.add_argument("--max-prompts", type=int, default=200, help="per group, seen and held-out (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--i3d", type=Path, help="a TorchScript I3D (B,3,T,224,224 in [-1,1] -> features): adds "
                   "true FVD; never downloaded")
    p.add_argument("--cache", type=Path, help="evaluator cache dir (default: <first --data>/evaluators)")
    p.add_argument("--evaluator-steps", type=int, default=400, help="evaluator training steps (default 400)")
    p.add_argument("--min-clips", type=int, default=3, help="real clips an object needs to be a class (default 3)")
    p.add_argument("--json", action="store_true", help="print eval.json instead of the table")

    p = cmd("submit", "Run an experiment spec (jobs/*.yaml): its stages in order, or chained on SLURM.")
    p.add_argument("spec", type=Path)
    p.add_argument("--stages", help="comma-separated subset of frames,vocab,train,evaluate")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--dry-run", action="store_true", help="print every sbatch script and the dependency graph")

    p = cmd("status", "Show each stage's and array task's state (sacct + outputs) and how to resubmit.")
    p.add_argument("spec", type=Path, metavar="RUN_DIR|SPEC|NAME",
                   help="a training run dir, or the experiment spec (or its name) that `t2v submit` ran")

    p = cmd("demo", "Run the pipeline end to end on a generated toy dataset.")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--videos", type=int, default=600)
    p.add_argument("--seed", type=int, default=0, help="toy world seed: which cells are held out (default 0)")
    p.add_argument("--eval-every", type=int, help="evaluate every N training steps (default: half way)")
    p.add_argument("--steps", type=int, default=600, help="training steps (debug_cpu preset)")
    p.add_argument("--evaluator-steps", type=int, default=400, help=argparse.SUPPRESS)  # tests: smaller
    p.add_argument("--min-clips", type=int, default=3, help=argparse.SUPPRESS)
    return top


def _resources(a):
    """The flags' Resources; on SLURM checked against the cluster (jobs/cluster.py), which refuses
    a request no node can meet before anything is submitted (also for --dry-run)."""
    from jobs.cluster import fit
    from jobs.executor import Resources

    given = {k: getattr(a, k, None) for k in ("partition", "account", "qos", "timeout_min", "cpus_per_task",
                                              "mem_gb", "array_parallelism", "nodes", "tasks_per_node",
                                              "gpus_per_node")}
    given = {k: v for k, v in given.items() if v is not None}
    for k in ("timeout_min", "cpus_per_task", "mem_gb", "array_parallelism", "nodes", "tasks_per_node"):
        if k in given and given[k] <= 0:
            raise UserError(f"--{k.replace('_', '-')} must be > 0, not {given[k]:g}")
    if given.get("gpus_per_node", 0) < 0:
        raise UserError("--gpus-per-node must be >= 0")
    res = Resources(**given, asked=frozenset(given))
    return fit(res, getattr(a, "cmd", None) or "job") if getattr(a, "executor", "local") == "slurm" else res


def _ranks(a) -> int:
    return (getattr(a, "nodes", None) or 1) * (getattr(a, "tasks_per_node", None) or 1)


def cmd_toy_data(a) -> int:
    from .rundir import check_out
    from .toydata import make_toy

    check_out(a.out)
    meta = make_toy(a.out, videos=a.videos, seed=a.seed)
    print(f"wrote {meta['counts']['train']} train + {meta['counts']['validation']} validation clips "
          f"to {a.out}/videos, labels in {a.out}/labels, held-out prompts in {a.out}/toy_meta.json")
    print("held out of train (toy seed %d):\n  pairs    %s\n  objects  %s\n  control  %s (unreachable: its glyph "
          "is in no training clip)" % (a.seed, "; ".join(f"{o} / {t}" for o, t in meta["heldout_pairs"]),
                                       ", ".join(meta["heldout_objects"]), ", ".join(meta["unreachable"])))
    return 0


def frames_config(a):
    from .frames import FramesConfig
    from .manifests import load_subset

    templates = tuple(a.templates)
    if a.subset:
        if templates:
            raise UserError("give --templates or --subset, not both")
        templates = tuple(load_subset(a.subset)["templates"])
    # Absolute paths: a SLURM job may start in another directory.
    return FramesConfig(labels=a.labels.absolute(), videos=a.videos.absolute(), out=a.out.absolute(),
                        templates=templates,
                        frames=a.frames, size=a.size, stride=a.stride, offset=a.offset,
                        shard_size=a.shard_size, decoder=a.decoder, resize=a.resize,
                        compression=a.compression)


def run_frames(cfg, a) -> int:
    from jobs.executor import map_tasks, sbatch_script, split_note
    from jobs.tasks import FramesTask

    from . import frames

    p = frames.plan(cfg)  # validates the inputs before anything is written
    if not a.dry_run:
        from .rundir import check_out

        check_out(cfg.out)
        p = frames.prepare(cfg, p)
    print(f"frames: {p.n_labels} labelled samples, {len(p.samples)} after the template filter, "
          f"{len(p.shards)} shard(s) of <= {cfg.shard_size}; {len(p.done)} complete, {len(p.todo)} to do")
    logs = Path(cfg.out) / "logs" / "frames"  # submitit names files by job id inside
    res = _resources(a)
    if a.dry_run:
        if p.todo:
            print(f"would run shards {p.todo} on the {a.executor} executor")
        if a.executor == "slurm":
            if note := split_note(len(p.todo), res):
                print(note + "; the first:")
            print(sbatch_script(logs, res, "t2v-frames", array_size=len(p.todo)))
        return 0
    outs = map_tasks(FramesTask(cfg), p.todo, kind=a.executor, folder=logs, res=res,
                     name="t2v-frames", desc="frames shards", wait=not a.no_wait)
    if a.executor == "slurm" and a.no_wait:
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


def cmd_frames(a) -> int:
    return run_frames(frames_config(a), a)


def vocab_config(a):
    from .vocab import VocabConfig

    if a.dim is not None and a.dim < 1:
        raise UserError("--dim must be >= 1")
    return VocabConfig(labels=tuple(p.absolute() for p in a.labels), out=a.out.absolute(), mode=a.mode,
                       pretrained=a.pretrained.absolute() if a.pretrained else None, dim=a.dim,
                       corpus=tuple(p.absolute() for p in a.corpus), epoch=a.epoch, skip_bad=a.skip_bad)


def run_vocab(cfg, a) -> int:
    from jobs.executor import map_tasks, sbatch_script
    from jobs.tasks import VocabTask

    from . import vocab

    samples, kept, excluded = vocab.parse(cfg)  # validate before submitting anything
    vocab.check_pretrained(cfg)
    if not a.dry_run:
        from .rundir import check_out

        check_out(cfg.out)
    src = f"pretrained {cfg.pretrained}" if cfg.pretrained else f"a fastText skipgram (dim {cfg.train_dim}) trained here"
    print(f"vocab: {len(samples)} labelled samples, {len(kept)} with text to condition on ({cfg.mode} mode); "
          f"vectors from {src}")
    logs = Path(cfg.out) / "logs" / "vocab"
    if a.dry_run:
        if a.executor == "slurm":
            print(sbatch_script(logs, _resources(a), "t2v-vocab"))
        return 0
    (o,) = map_tasks(VocabTask(cfg), [0], kind=a.executor, folder=logs, res=_resources(a), name="t2v-vocab",
                     desc="vocab", wait=not a.no_wait)
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


def cmd_vocab(a) -> int:
    return run_vocab(vocab_config(a), a)


def cmd_neighbors(a) -> int:
    from .vocab import Vocab

    if a.k < 1:
        raise UserError(f"-k must be >= 1, not {a.k}")
    v = Vocab(a.vocab)
    toks, _ = v.encode(a.word)
    known = [t for t in toks if t in v.index]
    note = "in the vocabulary" if len(known) == len(toks) else "not all in the vocabulary: subword vectors"
    print(f"{a.word!r} -> {toks} ({note})")
    for tok, sim in v.neighbors(a.word, a.k):
        print(f"  {sim:+.3f}  {tok}")
    return 0


def train_config(a):
    from .train import build_config
    from .tracking import default_uri

    sets = list(a.set)
    if a.max_steps is not None:
        sets.append(f"max_steps={a.max_steps}")
    # Resolve the default store now, so SLURM jobs log where the submitter looks.
    sets.append(f"tracking_uri={a.tracking_uri or default_uri(Path.cwd())}")
    if a.experiment:
        sets.append(f"experiment={a.experiment}")
    if a.executor == "debug" and _ranks(a) > 1:
        raise UserError("the debug executor runs one process; use --executor local or slurm for several ranks")
    return build_config(a.data.absolute(), a.vocab.absolute(), a.run_dir.absolute(), a.preset, sets)


def _prepare_tracking(cfg) -> None:
    """Store and experiment exist before any task starts (tasks racing to create them fail)."""
    from .tracking import prepare_store

    try:
        prepare_store(cfg.tracking_uri, cfg.experiment)
    except Exception as e:  # noqa: BLE001  training still runs without MLflow; it warns then
        print(f"warning: MLflow store {cfg.tracking_uri} not ready ({type(e).__name__}: {str(e)[:200]})",
              file=sys.stderr)


def run_train(cfg, a) -> int:
    from dataclasses import replace

    from jobs.executor import run_job, sbatch_script
    from jobs.submit import ChainServer, with_dependency
    from jobs.tasks import TrainTask

    from . import train

    from .rundir import holder

    ranks = _ranks(a)
    info = train.check(cfg, ranks)
    if who := holder(cfg.run_dir):
        raise UserError(f"{cfg.run_dir} is in use by another training run ({who}); wait for it to end or stop it")
    if not a.dry_run:
        _prepare_tracking(cfg)
    resumed = [p for p in train.newest_checkpoint(cfg.run_dir)[:1] if p]  # the file a resume loads, not a torn one
    print(f"train: {info['clips']} clips, conditions of dim {info['cond_dim']} ({info['mode']} mode), "
          f"preset {cfg.preset}, {ranks} rank(s), batch {cfg.batch}, to step {cfg.max_steps}; "
          + (f"resuming from {resumed[0].name}" if resumed else "new run") + f"; MLflow at {cfg.tracking_uri}")
    logs = Path(cfg.run_dir) / "logs"
    if a.dry_run:
        if a.executor == "slurm":
            print(sbatch_script(logs, _resources(a), "t2v-train"))
        return 0
    # One run has one writer (rank 0): it gets a server of its own only when asked ("on").
    server = ChainServer("on" if a.tracking_server == "on" else "off", cfg.tracking_uri,
                         Path(cfg.run_dir) / "tracking", a.executor, _server_resources(a, 1), "t2v-train-mlflow",
                         wait=not a.no_wait)
    cfg = replace(cfg, tracking_server=server.file)
    with server:
        o = run_job(TrainTask(cfg), kind=a.executor, folder=logs, res=with_dependency(_resources(a), server.dependency),
                    name="t2v-train", wait=not a.no_wait, progress=True)
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


def cmd_train(a) -> int:
    cfg = train_config(a)
    return run_sweep(cfg, a) if a.sweep else run_train(cfg, a)


def run_sweep(base, a) -> int:
    """All points of a sweep as one array, grouped under one MLflow parent run."""
    from dataclasses import replace

    from jobs.executor import map_tasks, sbatch_script, split_note
    from jobs.submit import ChainServer, with_dependency
    from jobs.tasks import TrainTask

    from . import train

    name = Path(base.run_dir).name
    points = train.sweep_points(replace(base, sweep=name), a.sweep)
    for p in points:
        train.check(p)
    print(f"sweep {name}: {len(points)} point(s) -> " + ", ".join(Path(p.run_dir).name for p in points))
    logs = Path(base.run_dir) / "logs"
    res = _resources(a)
    # One writer for the whole array: its own server (a local child, or a one-CPU SLURM job
    # that the points start after and that stops once they have all ended).
    server = ChainServer(a.tracking_server, base.tracking_uri, Path(base.run_dir) / "tracking", a.executor,
                         _server_resources(a, len(points)), "t2v-sweep-mlflow", many=True, dry_run=a.dry_run,
                         wait=not a.no_wait)
    if a.dry_run:
        if a.executor == "slurm":
            with server:  # prints its script
                if note := split_note(len(points), res):
                    print(note + "; the first:")
                print(sbatch_script(logs, with_dependency(res, server.dependency), "t2v-sweep",
                                    array_size=len(points)))
        return 0
    parent = _parent_run(base, name)
    points = [replace(p, parent_run_id=parent, tracking_server=server.file) for p in points]
    with server:
        outs = map_tasks(TrainTask(), points, kind=a.executor, folder=logs,
                         res=with_dependency(res, server.dependency), name="t2v-sweep",
                         desc="sweep points", wait=not a.no_wait)
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


def _server_resources(a, points: int):
    """One CPU on the sweep's partition, for as long as the throttled array may take."""
    from jobs.executor import Resources

    waves = -(-points // max(1, a.array_parallelism))
    return Resources(partition=a.partition, account=a.account, qos=a.qos, cpus_per_task=1, mem_gb=2,
                     timeout_min=(a.timeout_min or Resources.timeout_min) * waves)


def _parent_run(cfg, name: str) -> str:
    """The sweep's MLflow parent run; its id stays in the sweep dir's mlflow_run_id across resubmissions."""
    from .tracking import Tracker

    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    _prepare_tracking(cfg)
    t = Tracker(cfg.tracking_uri, cfg.experiment, Path(cfg.run_dir), {"sweep": " ".join(sys.argv[1:])},
                {"t2v.sweep": name, "t2v.role": "sweep-parent"}, run_name=name)
    t.finish()  # a grouping row in the UI; the points carry the work
    return t.run_id or ""


def cmd_sample(a) -> int:
    from .sample import run_dir_of, sample
    from .tracking import default_uri

    if bool(a.run_dir) == bool(a.run_id):
        raise UserError("give exactly one of --run-dir and --run-id")
    run_dir = a.run_dir or run_dir_of(a.run_id, a.tracking_uri or default_uri(Path.cwd()))
    meta = sample(run_dir, a.text, a.n, a.seed, a.out, a.checkpoint)
    print(f"step {meta['step']} ({meta['checkpoint']}): {len(meta['rows'])} prompt(s) x {meta['n']} sample(s)")
    for f in meta["files"]:
        print(f"  {f}")
    return 0


def cmd_evaluate(a) -> int:
    import json

    from .evaluate import EvalConfig, run, table

    cfg = EvalConfig(run_dir=a.run_dir.absolute(), data=tuple(d.absolute() for d in a.data),
                     checkpoint=a.checkpoint, samples=a.samples, max_prompts=a.max_prompts, seed=a.seed,
                     i3d=a.i3d, cache=a.cache, steps=a.evaluator_steps, min_clips=a.min_clips)
    r = run(cfg)
    if a.json:
        print(json.dumps({k: v for k, v in r.items() if k != "prompts"}, indent=1))
    else:
        print(table(r))
        print(f"per-cell heatmap: {r['heatmap']}")
        print(f"written to {Path(a.run_dir) / 'eval.json'}"
              + (f"; logged on MLflow run {r['mlflow_run_id']}" if r.get("mlflow_run_id") else ""))
    return 0


def cmd_submit(a) -> int:
    from jobs.submit import submit

    stages = [s.strip() for s in a.stages.split(",") if s.strip()] if a.stages is not None else None
    return submit(a.spec, stages, a.executor, a.dry_run)


def cmd_status(a) -> int:
    from jobs.status import status

    return status(a.spec)


def demo_prompts(meta: dict, train_labels: Path) -> list[str]:
    """One seen prompt, one of each held-out kind, and one with a word in no caption."""
    from .labels import fill, read_labels

    seen = read_labels(train_labels)[0]
    (obj, tmpl), new_obj = meta["heldout_pairs"][0], meta["heldout_objects"][0]
    shape = new_obj.split()[-1]
    return [fill(seen.template, seen.placeholders).lower(),  # seen in training
            fill(tmpl, [obj]).lower(),  # held out: a known object with a template it never had
            fill(seen.template, [new_obj]).lower(),  # held out: a new colour + shape composition
            fill(seen.template, [f"purple {shape}"]).lower()]  # "purple" is in no caption: fastText subwords


def cmd_demo(a) -> int:
    """toy data -> frames (train, validation) -> vocab -> train -> sample -> evaluate, all under --out."""
    import json
    import shutil
    import time

    from .evaluate import EvalConfig, run as evaluate, table
    from .frames import FramesConfig
    from .manifests import load_subset
    from .sample import sample
    from .toydata import make_toy
    from .tracking import default_uri
    from .train import build_config
    from .vocab import VocabConfig

    from .evaluate import validate

    t0 = time.perf_counter()
    validate(EvalConfig(run_dir=Path(a.out), steps=a.evaluator_steps, min_clips=a.min_clips))  # before hours of work
    if a.videos < 1 or a.steps < 1:
        raise UserError("--videos and --steps must be >= 1")
    out = Path(a.out).absolute()
    data = out / "toy"
    if not (data / "toy_meta.json").exists():
        make_toy(data, videos=a.videos, seed=a.seed)
    elif json.loads((data / "toy_meta.json").read_text()).get("seed") != a.seed:
        raise UserError(f"{out} holds the demo of another toy seed; use another --out for --seed {a.seed}")
    local = argparse.Namespace(dry_run=False, no_wait=False, executor="local", partition=None, account=None,
                               qos=None, timeout_min=30, cpus_per_task=1, mem_gb=2, array_parallelism=2)
    labels = (data / "labels" / "train.json", data / "labels" / "validation.json")
    templates = tuple(load_subset("toy")["templates"])
    for split, dest in ((0, "frames"), (1, "frames-val")):  # validation clips: held-out prompts for evaluation
        print(f"\n== frames ({labels[split].stem}) == ({time.perf_counter() - t0:.0f} s in)")
        rc = run_frames(FramesConfig(labels=labels[split], videos=data / "videos", out=out / dest,
                                     templates=templates, shard_size=128), local)
        if rc:
            return rc
    print(f"\n== vocab == ({time.perf_counter() - t0:.0f} s in)")
    # Parts mode: the template's words drive the motion, the object's words the look.
    rc = run_vocab(VocabConfig(labels=labels, out=out / "vocab", mode="parts"), local)
    if rc:
        return rc
    print(f"\n== train == ({time.perf_counter() - t0:.0f} s in)")
    uri = default_uri(out)
    cache = out / "evaluators"
    cfg = build_config(out / "frames", out / "vocab", out / "run", "debug_cpu",
                       [f"max_steps={a.steps}", f"tracking_uri={uri}", "experiment=demo",
                        f"eval_every={a.eval_every if a.eval_every is not None else a.steps // 2 if a.steps >= 30 else 0}",
                        f"eval_data={out / 'frames-val'}",
                        f"eval_cache={cache}"])
    train_args = argparse.Namespace(**vars(local), nodes=1, tasks_per_node=1, gpus_per_node=0, tracking_server="auto")
    rc = run_train(cfg, train_args)
    if rc:
        return rc
    print(f"\n== sample == ({time.perf_counter() - t0:.0f} s in)")
    prompts = demo_prompts(json.loads((data / "toy_meta.json").read_text()), labels[0])
    meta = sample(out / "run", prompts, n=4, seed=0, out=out / "samples.gif")
    print(f"\n== evaluate == ({time.perf_counter() - t0:.0f} s in)")
    r = evaluate(EvalConfig(run_dir=out / "run", data=(out / "frames", out / "frames-val"), cache=cache,
                            steps=a.evaluator_steps, min_clips=a.min_clips))
    shutil.copyfile(out / "run" / "eval.json", out / "eval.json")
    print(table(r))
    rows = json.loads((out / "run" / "clips" / "prompts.json").read_text())
    clips = sorted((out / "run" / "clips").glob("*.gif"))
    print(f"\ndemo done in {time.perf_counter() - t0:.0f} s, everything under {out}/:\n"
          f"  samples         {meta['files'][0]} (rows: {'; '.join(prompts)})\n"
          f"  training clips  {clips[-1] if clips else '-'} (rows: "
          + "; ".join(f"{x['template'].replace('[something]', x['object'])}"
                      + (" [held out]" if x["held_out"] else "") for x in rows) + ")\n"
          f"  evaluation      {out / 'eval.json'}\n"
          f"  run dir         {out / 'run'} (checkpoints, config, generator.pt)\n"
          f"  MLflow UI       .venv/bin/mlflow ui --backend-store-uri {uri}\n"
          "                  then open http://127.0.0.1:5000, experiment 'demo'")
    return 0


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    handler = {"toy-data": cmd_toy_data, "frames": cmd_frames, "vocab": cmd_vocab, "neighbors": cmd_neighbors,
               "train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "submit": cmd_submit,
               "status": cmd_status,
               "demo": cmd_demo}[a.cmd]
    try:
        return handler(a)
    except UserError as e:
        print(f"t2v {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write refused: --out a file, read-only, the disk full
        print(f"t2v {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:  # ffmpeg writing a clip (the disk full, a bad path)
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        print(f"t2v {a.cmd}: error: {Path(str(e.cmd[0])).name} failed: {lines[-1] if lines else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
