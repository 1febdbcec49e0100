"""Where one training step's time goes (not a test): torch.profiler over `GAN.step`.

Reads a demo's output (its `frames/` and `vocab/`, e.g. after `t2v demo --out D --steps 20`),
builds the `debug_cpu` preset with any `--set` overrides, times a few steps after warm-up and
prints the profiler's top operators (by self CPU time; `--shapes` groups them by input shape).

    OMP_NUM_THREADS=1 .venv/bin/python bench/profile_step.py demo-output --set g_ch=8   # against the preset's 12
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.train import GAN, Batches, RankBatches, build_config, check  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path, help="a `t2v demo --out` directory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="timed steps (then 4 profiled ones)")
    ap.add_argument("--shapes", action="store_true", help="group operators by input shape")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = build_config(a.demo / "frames", a.demo / "vocab", Path(run_dir), "debug_cpu", a.set)
        info = check(cfg)
        gan = GAN(cfg, info["cond_dim"], torch.device("cpu"), info["parts"])
        loader = iter(torch.utils.data.DataLoader(
            info["data"], batch_sampler=RankBatches(len(info["data"]), cfg.batch, 0, 1, cfg.seed)))
        batches = Batches(loader, torch.device("cpu"), cfg.channels_last, 0)  # what `t2v train` feeds
        for _ in range(a.warmup):
            gan.step(batches)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            gan.step(batches)
        print(f"{(time.perf_counter() - t0) / a.steps:.3f} s/step ({torch.get_num_threads()} thread(s), "
              f"batch {cfg.batch}, mean of {a.steps} after {a.warmup} warm-up)")
        with profile(record_shapes=a.shapes) as p:
            for _ in range(4):
                gan.step(batches)
    print(p.key_averages(group_by_input_shape=a.shapes).table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
