"""How fast D learns which look goes with which words (not a test): G frozen at its first weights.

Reads a demo's output (its `frames/` and `vocab/`), builds `debug_cpu` with any `--set`
overrides, runs `GAN.step` with G's optimiser step skipped, and every 25 steps prints each D's
mean score gap on 4 fresh batches: the real clip under its own caption minus under its hard
negative (`r-m`, what conditioning rests on) and minus a fake's under the same caption (`r-f`).

    OMP_NUM_THREADS=2 .venv/bin/python bench/match_probe.py demo-output --steps 200
    OMP_NUM_THREADS=2 .venv/bin/python bench/match_probe.py demo-output --steps 200 --set match_weight=0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.train import GAN, mismatched  # noqa: E402
from profile_step import demo_gan  # noqa: E402  bench/profile_step.py: debug_cpu on a demo's data


def gaps(gan: GAN, batches, n: int = 4) -> list[float]:
    """[image D r-m, video D r-m, image D r-f, video D r-f], each the mean over ``n`` batches."""
    rows = []
    for _ in range(n):
        real, cond = batches()
        with torch.no_grad():
            fake = gan.G(cond, gan.G.noise(real.shape[0], "cpu"))
            m_vid, m_img = mismatched(cond, gan.cfg.mismatch, gan.cond_parts, gan.vid_template_only)
            ds = ((gan.D_img, m_img), (gan.D_vid, m_vid))
            r = [D(real, cond).mean().item() for D, _ in ds]
            m = [D(real, mm).mean().item() for D, mm in ds]
            f = [D(fake, cond).mean().item() for D, _ in ds]
        rows.append([r[0] - m[0], r[1] - m[1], r[0] - f[0], r[1] - f[1]])
    return torch.tensor(rows).mean(0).tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path, help="a `t2v demo --out` directory")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        gan, batches = demo_gan(a.demo, a.set, Path(run_dir))
        gan.opt_G.step = lambda *args, **kw: None  # G stays as drawn at the start: only D learns
        print(" step   image D r-m   video D r-m   image D r-f   video D r-f")
        for step in range(1, a.steps + 1):
            gan.step(batches)
            if step % 25 == 0:
                print(f"{step:5d}" + "".join(f"{g:14.2f}" for g in gaps(gan, batches)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
