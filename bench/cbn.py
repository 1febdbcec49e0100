"""The generator's conditional BatchNorm on a channels-last CPU activation (not a test).

CBN3d normalises a float32 channels-last tensor with its own per-sample affine
(models.channel_stats) instead of BatchNorm3d's kernel. This times forward + backward of
both on the same tensor, in one process, interleaved, and prints the ratio.

    OMP_NUM_THREADS=2 .venv/bin/python bench/cbn.py            # debug_cpu's last block: 8x12x16x32x32
    OMP_NUM_THREADS=2 .venv/bin/python bench/cbn.py --ch 24 --size 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.models import CBN3d  # noqa: E402


def timed(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ch", type=int, default=12)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    torch.manual_seed(0)
    m = CBN3d(a.ch, 32)
    y = torch.randn(a.batch, 32)
    x = torch.randn(a.batch, a.ch, a.frames, a.size, a.size).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()

    def own():  # CBN3d's channels-last path (what its forward takes for this tensor)
        m.affine(x, 1 + m.gain(y), m.bias(y)).square().sum().backward()

    def batchnorm():  # the same module through BatchNorm3d's kernel, on the same tensor
        m.batchnorm(x, 1 + m.gain(y), m.bias(y)).square().sum().backward()

    for fn in (own, batchnorm):
        fn()  # warm-up
    times = {"own": [], "batchnorm": []}
    for _ in range(a.rounds):
        times["own"].append(timed(own, a.reps))
        times["batchnorm"].append(timed(batchnorm, a.reps))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"CBN3d forward+backward on {tuple(x.shape)} channels-last float32, {torch.get_num_threads()} "
          f"thread(s), median of {a.rounds} rounds x {a.reps}: own path {med['own']:.2f} ms, "
          f"BatchNorm3d kernel {med['batchnorm']:.2f} ms, speed-up {med['batchnorm'] / med['own']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
