"""Where one training step's time goes (not a test): torch.profiler over `GAN.step`.

Reads a demo's output (its `frames/` and `vocab/`, e.g. after `t2v demo --out D --steps 20`),
builds the `debug_cpu` preset with any `--set` overrides, times a few steps after warm-up and
prints the profiler's top operators (by self CPU time; `--shapes` groups them by input shape).

    OMP_NUM_THREADS=1 .venv/bin/python bench/profile_step.py demo-output --set g_ch=8   # against the preset's 12

`--parts` also times the step's pieces on one batch: G's forward (without and with its
backward), each D's forward + backward on real and fake clips together, and each D's gradient
penalty (every `gp_every`-th step only).
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
from pipeline.train import GAN, Batches, RankBatches, build_config, check, gradient_penalty  # noqa: E402
from train_step import timed  # noqa: E402  bench/train_step.py: one warm-up call, then the mean of n


def mean_ms(fn, n: int = 10) -> float:
    return timed(fn, n) * 1000


def parts(gan: GAN, batches) -> None:
    """Milliseconds of each piece of a step, one batch each (what `GAN.step` is made of)."""
    real, cond = batches()
    G, z = gan.G, lambda: gan.G.noise(real.shape[0], "cpu")  # noqa: E731
    with torch.no_grad():
        print(f"  G forward, no grad            {mean_ms(lambda: G(cond, z())):7.1f} ms")
    print(f"  G forward + backward          {mean_ms(lambda: G(cond, z()).mean().backward()):7.1f} ms")
    both, conds = torch.cat([real, real.flip(0)]), torch.cat([cond, cond])
    for name, D in (("image D", gan.D_img), ("video D", gan.D_vid)):
        fb = lambda: D.score(D.features(both), conds).mean().backward()  # noqa: E731
        print(f"  {name} fwd + bwd, {len(both)} clips   {mean_ms(fb):7.1f} ms")
        gp = lambda: gradient_penalty(D, real, real.flip(0), cond).backward()  # noqa: E731
        print(f"  {name} gradient penalty     {mean_ms(gp):7.1f} ms")


def demo_gan(demo: Path, sets, run_dir: Path) -> tuple[GAN, Batches]:
    """`debug_cpu` with ``sets`` on a demo's frames and vocab, and the batches `t2v train` feeds it."""
    cfg = build_config(demo / "frames", demo / "vocab", run_dir, "debug_cpu", sets)
    info = check(cfg)
    gan = GAN(cfg, info["cond_dim"], torch.device("cpu"), info["parts"])
    loader = iter(torch.utils.data.DataLoader(
        info["data"], batch_sampler=RankBatches(len(info["data"]), cfg.batch, 0, 1, cfg.seed)))
    return gan, Batches(loader, torch.device("cpu"), cfg.channels_last, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path, help="a `t2v demo --out` directory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="timed steps (then 4 profiled ones)")
    ap.add_argument("--shapes", action="store_true", help="group operators by input shape")
    ap.add_argument("--parts", action="store_true", help="also time the step's pieces (G, each D, each penalty)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        gan, batches = demo_gan(a.demo, a.set, Path(run_dir))
        for _ in range(a.warmup):
            gan.step(batches)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            gan.step(batches)
        print(f"{(time.perf_counter() - t0) / a.steps:.3f} s/step ({torch.get_num_threads()} thread(s), "
              f"batch {gan.cfg.batch}, mean of {a.steps} after {a.warmup} warm-up)")
        if a.parts:
            parts(gan, batches)
        with profile(record_shapes=a.shapes) as p:
            for _ in range(4):
                gan.step(batches)
    print(p.key_averages(group_by_input_shape=a.shapes).table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
