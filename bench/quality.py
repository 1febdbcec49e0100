"""Generation quality on several toy seeds, with a longer training budget than `make demo`.

For each seed this runs the whole demo pipeline (`t2v demo --seed S`: toy data, frames,
vocab, training with evaluations along the way, sampling, evaluation) and then prints:
the learning curve (accuracies at each in-training evaluation), the final per-cell table
(objects x templates; P/O/U mark held-out pairs, held-out objects and the unreachable
control) and a summary against the targets of issue 16.

    .venv/bin/python bench/quality.py                       # seeds 0 1, 2400 steps each
    .venv/bin/python bench/quality.py --seeds 3 --steps 600 # a quick look
    .venv/bin/python bench/quality.py --set d_vid_cond=motion   # a lever, on seeds 0 1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.evaluate import cell_table  # noqa: E402

TARGETS = {"cond_acc_seen": 0.95, "cond_acc_heldout": 0.8, "min_cell_acc_heldout": 0.5}


def run_seed(out: Path, seed: int, steps: int, eval_every: int, threads: int, sets=()) -> dict:
    t2v = Path(sys.executable).with_name("t2v")
    cmd = [str(t2v), "demo", "--out", str(out), "--seed", str(seed), "--steps", str(steps),
           "--eval-every", str(eval_every), *[x for kv in sets for x in ("--set", kv)]]
    print(f"$ OMP_NUM_THREADS={threads} " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    r = json.loads((out / "eval.json").read_text())
    curve_file = out / "run" / "eval" / "curve.jsonl"
    curve = [json.loads(line) for line in curve_file.read_text().splitlines()] if curve_file.exists() else []
    return {"seed": seed, "eval": r, "curve": curve, "seconds": time.perf_counter() - t0}


def report(res: dict) -> None:
    r = res["eval"]
    print(f"\n== toy seed {res['seed']}: {res['seconds']:.0f} s ==")
    print("learning curve (in-training evaluations):")
    print(f"{'step':>6} {'seen':>6} {'heldout':>8} {'pairs':>6} {'objects':>8} {'worst':>6} {'unreach.':>9}")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for c in res["curve"]:
        print(f"{c['step']:>6} {fmt(c.get('cond_acc_seen')):>6} {fmt(c.get('cond_acc_heldout')):>8} "
              f"{fmt(c.get('cond_acc_heldout_pairs')):>6} {fmt(c.get('cond_acc_heldout_objects')):>8} "
              f"{fmt(c.get('min_cell_acc_heldout')):>6} {fmt(c.get('cond_acc_unreachable')):>9}")
    print(f"final (t2v evaluate, step {r['step']}): seen {fmt(r['cond_acc_seen'])}, held-out "
          f"{fmt(r['cond_acc_heldout'])} (pairs {fmt(r['cond_acc_heldout_pairs'])}, objects "
          f"{fmt(r['cond_acc_heldout_objects'])}), worst held-out cell {fmt(r['min_cell_acc_heldout'])}, "
          f"unreachable control {fmt(r.get('cond_acc_unreachable'))}, evaluator on real clips "
          f"{fmt(r['evaluator_real_acc'])}")
    print(cell_table(r))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    # 2400: with match_weight=1 two seeds side by side took 36 min 14 s on 2 slow fp32 cores
    # (3000 without it: 48 min 40 s, over the 45). Seed 1's held-out digit directions read 0.125
    # there, below the 0.5 target, as they read 0.000 at step 2400 of session 26's 3000-step run,
    # which met it at 3000 (docs/quality.md, sessions 26 and 28).
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--eval-every", type=int, default=600)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-output" / "quality")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a training config override for every seed (t2v demo --set)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="seeds run at once (default: one per CPU)")
    a = ap.parse_args()
    # Seeds run side by side, one torch thread each where there are cores for it: two small
    # processes use two cores better than one process with two threads (small convolutions
    # do not split well).
    jobs = max(1, min(len(a.seeds), a.jobs))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda s: run_seed(a.out / f"seed-{s}", s, a.steps, a.eval_every, threads, a.set),
                                a.seeds))
    for res in results:
        report(res)
    print("\nsummary against the targets:")
    ok = True
    for key, target in TARGETS.items():
        vals = [res["eval"].get(key) for res in results]
        hit = all(v is not None and v >= target for v in vals)
        ok &= hit
        print(f"  {key:24s} >= {target}: " + ", ".join("-" if v is None else f"{v:.3f}" for v in vals)
              + ("  ok" if hit else "  MISSED"))
    per_seed = ", ".join(f"{r['seconds']:.0f}" for r in results)
    print(f"wall time {time.perf_counter() - t0:.0f} s, {jobs} seed(s) at a time (per seed: {per_seed} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
