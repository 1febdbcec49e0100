"""The ``t2v`` command line: one subcommand per stage plus helpers.

Parsing turns flags into a stage's frozen config, validates it, prints the
plan, then hands the work to ``jobs.executor``. A ``UserError`` anywhere is
printed as one line (exit 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from jobs.cluster import fit
from jobs.executor import EXECUTORS, Resources
from jobs.stages import Launch, run_frames, run_sweep, run_train, run_vocab
from jobs.status import status
from jobs.submit import submit
from pipeline import evaluate
from pipeline.checkpoints import load_latest
from pipeline.errors import UserError
from pipeline.evaluate import EvalConfig, validate
from pipeline.rundir import check_out
from pipeline.frames import FramesConfig
from pipeline.labels import fill, read_labels
from pipeline.manifests import load_subset
from pipeline.sample import run_dir_of, sample
from pipeline.toydata import make_toy
from pipeline.compare import compare, run_dirs
from pipeline.tracking import default_uri, ui_url
from pipeline.train import build_config
from pipeline.vocab import Vocab, VocabConfig

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
    "compare": """examples:
  t2v compare runs/sw --out sw.gif                  # every point of a sweep, side by side (+ sw.csv)
  t2v compare runs/a runs/b other/sw --out cmp/     # any runs, from any sweeps: GIF, MP4, summary.csv
Each block is one run's newest checkpoint on the same prompts from the same noise, titled with the
settings that differ between the runs; summary.csv holds every run's params and latest metrics.
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
  t2v demo --out /tmp/d1 --seed 1 --set fake_cond=shuffle_g   # another toy seed, a training lever
""",
}


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, epilog=EXAMPLES.get(name),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _executor_flags(p, array: bool = True) -> None:
    """The "where it runs" flags every stage command shares (see jobs/stages.Launch)."""
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


def _data_commands(sub) -> None:
    """toy-data, frames, vocab, neighbors: the data stages."""
    p = _command(sub, "toy-data", "Generate a small something-something-v2-format dataset (webm + labels).")
    p.add_argument("out", type=Path)
    p.add_argument("--videos", type=int, default=200, help="number of clips, train + validation (default 200)")
    p.add_argument("--seed", type=int, default=0)

    p = _command(sub, "frames", "Decode videos into fixed-size uint8 clips in HDF5 shards, one array task per shard.")
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
                   help="pyav (default; in-process, faster: see docs/benchmarks.md) or skvideo (ffmpeg subprocess)")
    p.add_argument("--resize", choices=("squash", "center-crop"), default="squash")
    p.add_argument("--compression", choices=("gzip", "lzf", "none"), default="gzip")
    _executor_flags(p)

    p = _command(sub, "vocab", "Embed caption words with fastText (trained here, or pretrained .bin/.vec, streamed).")
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
    _executor_flags(p, array=False)

    p = _command(sub, "neighbors", "Nearest vocabulary tokens, by cosine similarity, for any word or phrase.")
    p.add_argument("--vocab", type=Path, required=True, help="a `t2v vocab` output dir")
    p.add_argument("word")
    p.add_argument("-k", type=int, default=5)


def _train_command(sub) -> None:
    """train: one run, several ranks, or a sweep."""
    p = _command(sub, "train", "Train the conditional video GAN (DDP on any number of ranks, resumable, tracked in MLflow).")
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
                        "see docs/hardening.md)")
    _executor_flags(p, array=False)
    p.add_argument("--nodes", type=int, help="(default 1)")
    p.add_argument("--tasks-per-node", type=int, help="ranks per node, one per GPU (default 1)")
    p.add_argument("--gpus-per-node", type=int, help="(default 0)")


def _result_commands(sub) -> None:
    """sample, evaluate: what a run's generator does."""
    p = _command(sub, "sample", "Generate clips for any prompt with a run's EMA generator (grid: prompts x samples).")
    p.add_argument("--run-dir", type=Path, help="a `t2v train` run dir")
    p.add_argument("--run-id", help="or an MLflow run id (its run_dir param is used)")
    p.add_argument("--tracking-uri", help="with --run-id (default: sqlite store in ./mlruns)")
    p.add_argument("--text", action="append", default=[], required=True, help="a prompt; repeat for more rows")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="a step number or checkpoint path (default: newest)")
    p.add_argument("--out", type=Path, required=True,
                   help="FILE.gif, FILE.mp4, FILE.h5 (raw uint8 clips: datasets videos (P,n,T,H,W,3) and "
                        "prompts), or a directory (GIF + MP4)")

    p = _command(sub, "evaluate", "Score a run: conditional accuracy, Frechet distance, diversity, with their ceilings.")
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
    p.add_argument("--evaluator-steps", type=int, default=EvalConfig.steps,
                   help=f"evaluator training steps (default {EvalConfig.steps})")
    p.add_argument("--min-clips", type=int, default=3, help="real clips an object needs to be a class (default 3)")
    p.add_argument("--json", action="store_true", help="print eval.json instead of the table")

    p = _command(sub, "compare", "Put runs side by side by their clips: one labelled block per run, plus summary.csv.")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR_OR_SWEEP_DIR")
    p.add_argument("--out", type=Path, required=True, help="FILE.gif, FILE.mp4 (table beside it as FILE.csv), "
                   "or a directory (step_N.gif, step_N.mp4, summary.csv)")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt and run (default 4)")
    p.add_argument("--seed", type=int, default=0, help="the noise every run gets (default 0)")


def _workflow_commands(sub) -> None:
    """submit, status, demo: whole experiments."""
    p = _command(sub, "submit", "Run an experiment spec (jobs/*.yaml): its stages in order, or chained on SLURM.")
    p.add_argument("spec", type=Path)
    p.add_argument("--stages", help="comma-separated subset of frames,vocab,train,evaluate")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--dry-run", action="store_true", help="print every sbatch script and the dependency graph")

    p = _command(sub, "status", "Show each stage's and array task's state (sacct + outputs) and how to resubmit.")
    p.add_argument("spec", type=Path, metavar="RUN_DIR|SPEC|NAME",
                   help="a training run dir, or the experiment spec (or its name) that `t2v submit` ran")

    p = _command(sub, "demo", "Run the pipeline end to end on a generated toy dataset.")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--videos", type=int, default=600)
    p.add_argument("--seed", type=int, default=0, help="toy world seed: which cells are held out (default 0)")
    p.add_argument("--eval-every", type=int, help="evaluate every N training steps (default: half way)")
    # 1000: with match_weight=1 (session 28) the slowest toy seeds, 1 and 2, read seen / held-out
    # 0.851 / 0.661 and 0.894 / 0.848 at step 1000 (the demo's targets: 0.7 / 0.4), where 1500
    # steps without it read 0.978 / 0.946 and 0.995 / 1.000 in half again the training time
    # (docs/quality.md, sessions 27 and 28).
    p.add_argument("--steps", type=int, default=1000, help="training steps (debug_cpu preset; default 1000)")
    # One rank: two ranks of 8 clips take as long a step as one process with 16, and learn less
    # per clip than one rank of 8 (docs/quality.md, session 11).
    p.add_argument("--ranks", type=int, default=1,
                   help="local training processes (DDP), 8 clips of the batch each (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config key after the demo's own (e.g. fake_cond=shuffle_g)")
    # The same default as training's in-loop evaluations, so the demo trains its evaluator once.
    p.add_argument("--evaluator-steps", type=int, default=EvalConfig.steps, help=argparse.SUPPRESS)  # tests: smaller
    p.add_argument("--min-clips", type=int, default=3, help=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="t2v", description="text2video: a SLURM-native text-to-video GAN pipeline.")
    sub = top.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for add in (_data_commands, _train_command, _result_commands, _workflow_commands):
        add(sub)
    return top


def _resources(a) -> Resources:
    """The flags' Resources; on SLURM checked against the cluster (jobs/cluster.py), which refuses
    a request no node can meet before anything is submitted (also for --dry-run)."""
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


def _launch(a) -> Launch:
    """The "where it runs" flags of a stage command."""
    return Launch(executor=a.executor, res=_resources(a), dry_run=a.dry_run, wait=not a.no_wait,
                  tracking_server=getattr(a, "tracking_server", "auto"))


def cmd_toy_data(a) -> int:
    check_out(a.out)
    meta = make_toy(a.out, videos=a.videos, seed=a.seed)
    print(f"wrote {meta['counts']['train']} train + {meta['counts']['validation']} validation clips "
          f"to {a.out}/videos, labels in {a.out}/labels, held-out prompts in {a.out}/toy_meta.json")
    print("held out of train (toy seed %d):\n  pairs    %s\n  objects  %s\n  control  %s (unreachable: its glyph "
          "is in no training clip)" % (a.seed, "; ".join(f"{o} / {t}" for o, t in meta["heldout_pairs"]),
                                       ", ".join(meta["heldout_objects"]), ", ".join(meta["unreachable"])))
    return 0


def frames_config(a):
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


def cmd_frames(a) -> int:
    return run_frames(frames_config(a), _launch(a)).code


def vocab_config(a):
    if a.dim is not None and a.dim < 1:
        raise UserError("--dim must be >= 1")
    return VocabConfig(labels=tuple(p.absolute() for p in a.labels), out=a.out.absolute(), mode=a.mode,
                       pretrained=a.pretrained.absolute() if a.pretrained else None, dim=a.dim,
                       corpus=tuple(p.absolute() for p in a.corpus), epoch=a.epoch, skip_bad=a.skip_bad)


def cmd_vocab(a) -> int:
    return run_vocab(vocab_config(a), _launch(a)).code


def cmd_neighbors(a) -> int:
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


def cmd_train(a) -> int:
    cfg = train_config(a)
    return (run_sweep(cfg, a.sweep, _launch(a)) if a.sweep else run_train(cfg, _launch(a))).code


def cmd_sample(a) -> int:
    if bool(a.run_dir) == bool(a.run_id):
        raise UserError("give exactly one of --run-dir and --run-id")
    run_dir = a.run_dir or run_dir_of(a.run_id, a.tracking_uri or default_uri(Path.cwd()))
    meta = sample(run_dir, a.text, a.n, a.seed, a.out, a.checkpoint)
    print(f"step {meta['step']} ({meta['checkpoint']}): {len(meta['rows'])} prompt(s) x {meta['n']} sample(s)")
    for f in meta["files"]:
        print(f"  {f}")
    return 0


def cmd_evaluate(a) -> int:
    cfg = EvalConfig(run_dir=a.run_dir.absolute(), data=tuple(d.absolute() for d in a.data),
                     checkpoint=a.checkpoint, samples=a.samples, max_prompts=a.max_prompts, seed=a.seed,
                     i3d=a.i3d, cache=a.cache, steps=a.evaluator_steps, min_clips=a.min_clips)
    r = evaluate.run(cfg)
    if a.json:
        print(json.dumps({k: v for k, v in r.items() if k != "prompts"}, indent=1))
    else:
        print(evaluate.table(r))
        print(f"per-cell heatmap: {r['heatmap']}")
        print(f"written to {Path(a.run_dir) / 'eval.json'}"
              + (f"; logged on MLflow run {r['mlflow_run_id']}" if r.get("mlflow_run_id") else ""))
    return 0


def cmd_compare(a) -> int:
    if a.samples < 1:
        raise UserError("--samples must be >= 1")
    r = compare(run_dirs(a.runs), a.out, a.samples, a.seed)
    print(f"{len(r['steps'])} run(s) side by side" + (f" (differing in {', '.join(r['varying'])})"
                                                      if r["varying"] else ""))
    for m in r["missing"]:
        print(f"  left out: {m}", file=sys.stderr)
    for f in (*r["files"], r["summary"]):
        print(f"  {f}")
    return 0


def cmd_submit(a) -> int:
    stages = [s.strip() for s in a.stages.split(",") if s.strip()] if a.stages is not None else None
    return submit(a.spec, stages, a.executor, a.dry_run)


def cmd_status(a) -> int:
    return status(a.spec)


def demo_prompts(meta: dict, train_labels: Path) -> list[str]:
    """One seen prompt, one of each held-out kind, and one with a word in no caption."""
    seen = read_labels(train_labels)[0]
    (obj, tmpl), new_obj = meta["heldout_pairs"][0], meta["heldout_objects"][0]
    shape = new_obj.split()[-1]
    return [fill(seen.template, seen.placeholders).lower(),  # seen in training
            fill(tmpl, [obj]).lower(),  # held out: a known object with a template it never had
            fill(seen.template, [new_obj]).lower(),  # held out: a new colour + shape composition
            fill(seen.template, [f"purple {shape}"]).lower()]  # "purple" is in no caption: fastText subwords


def cmd_demo(a) -> int:
    """toy data -> frames (train, validation) -> vocab -> train -> sample -> evaluate, all under --out."""
    t0 = time.perf_counter()
    validate(EvalConfig(run_dir=Path(a.out), steps=a.evaluator_steps, min_clips=a.min_clips))  # before hours of work
    if a.videos < 1 or a.steps < 1 or a.ranks < 1:
        raise UserError("--videos, --steps and --ranks must be >= 1")
    out = Path(a.out).absolute()
    uri, cache = default_uri(out), out / "evaluators"
    # Built before any work, so that a bad --set costs one line, not minutes of toy data.
    cfg = build_config(out / "frames", out / "vocab", out / "run", "debug_cpu",
                       [f"max_steps={a.steps}", f"batch={8 * a.ranks}", f"tracking_uri={uri}", "experiment=demo",
                        f"eval_every={a.eval_every if a.eval_every is not None else a.steps // 2 if a.steps >= 30 else 0}",
                        f"eval_data={out / 'frames-val'}", f"eval_cache={cache}", *a.set])
    data = out / "toy"
    if not (data / "toy_meta.json").exists():
        make_toy(data, videos=a.videos, seed=a.seed)
    elif json.loads((data / "toy_meta.json").read_text()).get("seed") != a.seed:
        raise UserError(f"{out} holds the demo of another toy seed; use another --out for --seed {a.seed}")
    # Local jobs have no queue to be fair to: the time limit only catches a hang. A fixed 30 min
    # stopped a 1600-step bench/quality.py run on a busy machine part-way (then nothing to sample).
    local = Launch(executor="local", res=Resources(timeout_min=24 * 60, cpus_per_task=1, mem_gb=2,
                                                   array_parallelism=2))
    labels = (data / "labels" / "train.json", data / "labels" / "validation.json")
    templates = tuple(load_subset("toy")["templates"])
    for split, dest in ((0, "frames"), (1, "frames-val")):  # validation clips: held-out prompts for evaluation
        print(f"\n== frames ({labels[split].stem}) == ({time.perf_counter() - t0:.0f} s in)")
        rc = run_frames(FramesConfig(labels=labels[split], videos=data / "videos", out=out / dest,
                                     templates=templates, shard_size=128), local).code
        if rc:
            return rc
    print(f"\n== vocab == ({time.perf_counter() - t0:.0f} s in)")
    # Parts mode: the template's words drive the motion, the object's words the look.
    rc = run_vocab(VocabConfig(labels=labels, out=out / "vocab", mode="parts"), local).code
    if rc:
        return rc
    print(f"\n== train == ({time.perf_counter() - t0:.0f} s in)")
    # The demo's ranks split this machine's cores (pipeline/dist.py), 8 clips each.
    rc = run_train(cfg, replace(local, res=replace(local.res, tasks_per_node=a.ranks))).code
    if rc:
        return rc
    reached = (load_latest(out / "run") or {}).get("step", 0)
    if reached < a.steps:  # stopped by a signal or a time limit: sampling now would show a half-trained run
        print(f"training stopped at step {reached} of {a.steps}; run the same command again to resume it",
              file=sys.stderr)
        return 1
    print(f"\n== sample == ({time.perf_counter() - t0:.0f} s in)")
    prompts = demo_prompts(json.loads((data / "toy_meta.json").read_text()), labels[0])
    meta = sample(out / "run", prompts, n=4, seed=0, out=out / "samples.gif")
    print(f"\n== evaluate == ({time.perf_counter() - t0:.0f} s in)")
    r = evaluate.run(EvalConfig(run_dir=out / "run", data=(out / "frames", out / "frames-val"), cache=cache,
                                steps=a.evaluator_steps, min_clips=a.min_clips))
    shutil.copyfile(out / "run" / "eval.json", out / "eval.json")
    print(evaluate.table(r))
    rows = json.loads((out / "run" / "clips" / "prompts.json").read_text())
    clips = sorted((out / "run" / "clips").glob("*.gif"))
    print(f"\ndemo done in {time.perf_counter() - t0:.0f} s, everything under {out}/:\n"
          f"  samples         {meta['files'][0]} (rows: {'; '.join(prompts)})\n"
          f"  training clips  {clips[-1] if clips else '-'} (rows: "
          + "; ".join(f"{x['template'].replace('[something]', x['object'])}"
                      + (" [held out]" if x["held_out"] else "") for x in rows) + ")\n"
          f"  evaluation      {out / 'eval.json'} (per-cell heatmap {r['heatmap']})\n"
          f"  run dir         {out / 'run'} (checkpoints, config, generator.pt)\n"
          f"  MLflow UI       .venv/bin/mlflow ui --backend-store-uri {uri}\n"
          f"                  then open {_demo_ui(uri)}")
    return 0


def _demo_ui(uri: str) -> str:
    """The demo experiment's runs table in the model-training view (see docs/mlflow-ui.md)."""
    from mlflow.tracking import MlflowClient  # seconds to import: only once the demo is done

    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("demo")
    return ui_url("http://127.0.0.1:5000", exp.experiment_id) if exp else "http://127.0.0.1:5000, experiment 'demo'"


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    handler = {"toy-data": cmd_toy_data, "frames": cmd_frames, "vocab": cmd_vocab, "neighbors": cmd_neighbors,
               "train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "compare": cmd_compare,
               "submit": cmd_submit,
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
