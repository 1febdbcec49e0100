"""Benchmark of one GAN training step against the original's plain loop (not a test).

In one run, same batch, widths and data, it times:
  original   a straight notebook-style loop: eager float32, separate Adam per
             discriminator, each stepped on its own, D weights left trainable
             during the G step; the same losses and gradient penalty, and the
             original's discriminators (full-resolution first blocks: no d_pool_first;
             a video D on the full-resolution clip: no d_vid_pool)
  ours       pipeline.train.GAN.step, exactly what `t2v train` runs, and its
             channels_last / torch.compile variants
and prints samples/s (real clips consumed per second) and the ratio to the
original, then the shard DataLoader's clips/s against what a step consumes.

    .venv/bin/python bench/train_step.py [--preset debug_cpu] [--steps 5] [--batch 16]
"""

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.toydata import make_toy  # noqa: E402
from pipeline.train import GAN, RankBatches, TrainData, build_config, to_model_input  # noqa: E402


def prepare(work: Path) -> tuple[Path, Path]:
    t2v = str(Path(sys.executable).with_name("t2v"))
    toy = work / "toy"
    if not (toy / "toy_meta.json").exists():
        make_toy(toy, videos=120, seed=0)
    if not (work / "frames-train" / "manifest.csv").exists():
        subprocess.run([t2v, "frames", "--labels", toy / "labels/train.json", "--videos", toy / "videos",
                        "--out", work / "frames-train"], check=True, capture_output=True)
    if not (work / "vocab" / "vocab.json").exists():
        subprocess.run([t2v, "vocab", "--labels", toy / "labels/train.json", toy / "labels/validation.json",
                        "--out", work / "vocab"], check=True, capture_output=True)
    return work / "frames-train", work / "vocab"


def batches(data: TrainData, batch: int):
    it = iter(torch.utils.data.DataLoader(data, batch_sampler=RankBatches(len(data), batch, 0, 1, 0)))

    def nxt():
        v, c = next(it)
        return to_model_input(v, "cpu"), c
    return nxt


def original_step(G, D_img, D_vid, opt_G, opt_Di, opt_Dv, nxt, d_steps=2, gp_w=100.0):
    bce = F.binary_cross_entropy_with_logits
    for _ in range(d_steps):
        real, cond = nxt()
        fake = G(cond, torch.randn(real.shape[0], G.frames, G.z_dim)).detach()
        for D, opt in ((D_img, opt_Di), (D_vid, opt_Dv)):
            opt.zero_grad()
            r, m, f = D(real, cond), D(real, cond.roll(1, 0)), D(fake, cond)
            loss = bce(r, torch.ones_like(r)) + bce(m, torch.zeros_like(m)) + bce(f, torch.zeros_like(f))
            a = torch.rand(real.shape[0], 1, 1, 1, 1)
            x = (a * real + (1 - a) * fake).requires_grad_(True)
            (g,) = torch.autograd.grad(D(x, cond).sum(), x, create_graph=True)
            (loss + gp_w * g.pow(2).flatten(1).sum(1).mean()).backward()
            opt.step()
    opt_G.zero_grad()
    fake = G(cond, torch.randn(cond.shape[0], G.frames, G.z_dim))
    fi, fv = D_img(fake, cond), D_vid(fake, cond)
    (bce(fi, torch.ones_like(fi)) + bce(fv, torch.ones_like(fv))).backward()
    opt_G.step()


def timed(fn, steps):
    fn()  # warm-up (and compile)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="debug_cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-output")
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    frames, vocab = prepare(a.work)
    data = TrainData(frames, vocab)
    cdim = data.cond.shape[1]
    base = build_config(frames, vocab, a.work / "run", a.preset, [f"batch={a.batch}"])
    clips_per_step = base.batch * base.d_steps
    results = {}

    # The original's discriminators: no d_pool_first, a video D on the full-resolution clip
    # (changes of ours, on in debug_cpu).
    gan = GAN(replace(base, d_pool_first=False, d_vid_pool=1), cdim, torch.device("cpu"))
    opts = (torch.optim.Adam(gan.G.parameters(), base.lr_g, betas=(base.beta1, base.beta2)),
            torch.optim.Adam(gan.D_img.parameters(), base.lr_d, betas=(base.beta1, base.beta2)),
            torch.optim.Adam(gan.D_vid.parameters(), base.lr_d, betas=(base.beta1, base.beta2)))
    nxt = batches(data, base.batch)
    results["original (eager f32 notebook loop)"] = timed(
        lambda: original_step(gan.G, gan.D_img, gan.D_vid, *opts, nxt, base.d_steps, base.gp_weight), a.steps)
    variants = {"ours": [], "ours + channels_last": ["channels_last=true"],
                "ours + (2+1)D G convs": ["g_conv=2+1d"]}
    if not a.no_compile:
        variants["ours + compile(G)"] = ["compile=true"]
    for name, extra in variants.items():
        cfg = build_config(frames, vocab, a.work / "run", a.preset, [f"batch={a.batch}", *extra])
        g = GAN(cfg, cdim, torch.device("cpu"))
        nxt = batches(data, cfg.batch)
        try:
            results[name] = timed(lambda: g.step(nxt), a.steps)
        except Exception as e:  # noqa: BLE001  e.g. no C++ toolchain for compile
            print(f"{name}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    ref = results["original (eager f32 notebook loop)"]
    print(f"\npreset {a.preset}, batch {base.batch}, {base.d_steps} D steps per G step, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}\n")
    print(f"{'':38s}{'s/step':>8s}{'clips/s':>9s}{'vs original':>13s}")
    for name, t in results.items():
        print(f"{name:38s}{t:8.3f}{clips_per_step / t:9.1f}{ref / t:12.2f}x")
    consume = clips_per_step / results["ours"]
    print(f"\ntraining consumes {consume:.1f} clips/s; shard DataLoader (batch {base.batch}):")
    for workers in (0, 2):
        loader = iter(torch.utils.data.DataLoader(data, batch_sampler=RankBatches(len(data), base.batch, 0, 1, 0),
                                                  num_workers=workers))
        next(loader)
        n, t0 = 30, time.perf_counter()
        for _ in range(n):
            next(loader)
        rate = n * base.batch / (time.perf_counter() - t0)
        print(f"  workers={workers}: {rate:8.0f} clips/s = {rate / consume:6.0f}x what training consumes")
    (a.work / "train_step.json").write_text(json.dumps({k: v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
