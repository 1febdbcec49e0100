"""A screen of training levers on a GPU machine (not a test): many short runs side by side.

The device machine has torch but not the project's environment, so this file does three
small things, and `bench/gpu_screen.sh` runs the runs there:

    .venv/bin/t2v demo --out /work/gx/s1 --seed 1 --steps 1 --eval-every 0   # here: data, vocab, evaluator
    .venv/bin/python bench/gpu_screen.py pack /work/gx/s1 gx/s1   # what a run reads, less fastText's .bin
    .venv/bin/pip download --no-deps -d gx/whl submitit==1.5.4    # the one package it lacks (gx/ is ignored)
    # then the device tool: `DEADLINE=430 STEPS=1000 EVERY=250 bash bench/gpu_screen.sh`, carry ["gx"]
    .venv/bin/python bench/gpu_screen.py summary RUNS              # the learning curves, per lever

`one SEED_DIR RUN_DIR KEY=VALUE...` is a single `pipeline.train.run` of `debug_cpu` with the
demo's in-training evaluation. Runs on a GPU differ from CPU runs in rounding only; a lever
found there is kept only once CPU runs of the demo's pipeline confirm it (docs/quality.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path


def pack(demo: Path, dest: Path) -> None:
    # fastText's .bin (40 MB) only serves words outside the vocabulary, which no toy prompt has.
    for d in ("frames", "frames-val", "evaluators"):
        shutil.copytree(demo / d, dest / d, dirs_exist_ok=True)
    (dest / "vocab").mkdir(parents=True, exist_ok=True)
    for f in ("vocab.json", "embeddings.h5", "samples.h5"):
        shutil.copy2(demo / "vocab" / f, dest / "vocab" / f)


def one(seed_dir: str, run_dir: str, sets: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.modules.setdefault("fasttext", types.ModuleType("fasttext"))  # imported by pipeline.vocab, unused here
    if os.environ.get("HIDE_MLFLOW"):  # try here what the device machine does: no mlflow, the tracker warns
        sys.modules["mlflow"] = None
    import torch

    torch.backends.cudnn.allow_tf32 = False  # fp32 convolutions and products, as on the CPU
    torch.backends.cuda.matmul.allow_tf32 = False
    from pipeline.train import build_config, run

    cfg = build_config(f"{seed_dir}/frames", f"{seed_dir}/vocab", run_dir, "debug_cpu",
                       [f"eval_data={seed_dir}/frames-val", f"eval_cache={seed_dir}/evaluators",
                        f"tracking_uri=sqlite:///{Path(run_dir).absolute()}/mlflow.db", "amp=false",
                        "keep_checkpoints=1", *sets])
    print(run(cfg)["status"], flush=True)


def summary(runs: Path) -> None:
    """RUNS/NAME_sSEED/eval/curve.jsonl -> per lever, seen / held-out / worst cell at each step."""
    table: dict = {}
    for f in sorted(runs.glob("*_s*/eval/curve.jsonl")):
        lever, seed = f.parent.parent.name.rsplit("_s", 1)
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:  # a run cut at its deadline mid-line
                continue
            table.setdefault(lever, {}).setdefault(r["step"], {})[seed] = (
                r["cond_acc_seen"], r.get("cond_acc_heldout") or 0.0, r.get("min_cell_acc_heldout") or 0.0)
    for lever, steps in table.items():
        print(f"\n{lever}: seen / held-out / worst held-out cell per toy seed; mean seen / held-out")
        for step, by in sorted(steps.items()):
            cells = "  ".join(f"s{s} {a:.2f}/{b:.2f}/{c:.2f}" for s, (a, b, c) in sorted(by.items()))
            mean = [sum(v[i] for v in by.values()) / len(by) for i in (0, 1)]
            print(f"  {step:5d}  {cells}   mean {mean[0]:.2f}/{mean[1]:.2f}")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:] or ["-h"]
    if cmd == "pack":
        pack(Path(args[0]), Path(args[1]))
    elif cmd == "one":
        one(args[0], args[1], args[2:])
    elif cmd == "summary":
        summary(Path(args[0]))
    else:
        print(__doc__)
        sys.exit(0 if cmd in ("-h", "--help") else 2)
