"""Benchmark of the frames stage against the decode floor (not a test).

On one set of clips, in one run, it times:
  floor     `ffmpeg -i X -f null -` over every file (decode only, nothing kept)
  stage     `t2v frames` with each decoder, one array task, as a user runs it
  naive     the original's way: decode at full resolution, resize in Python,
            keep float32 (pickled)
and prints clips/s, source frames/s, time / floor, and bytes on disk per clip
against float32.

    .venv/bin/python bench/frames.py [--videos 120] [--data DIR] [--workers 1]
"""

import argparse
import json
import pickle
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline._skvideo_compat import skvideo_io  # noqa: E402
from pipeline.decode import sample_indices  # noqa: E402
from pipeline.toydata import make_toy  # noqa: E402

T, S = 16, 32


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def floor(files, workers):
    def one(f):
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(f), "-f", "null", "-"], check=True)
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, files))


def stage(data, out, decoder, workers, n):
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([str(Path(sys.executable).with_name("t2v")), "frames", "--labels", str(data / "labels/all.json"),
                    "--videos", str(data / "videos"), "--out", str(out), "--decoder", decoder,
                    "--shard-size", str(-(-n // workers)), "--array-parallelism", str(workers)],
                   check=True, capture_output=True)


def naive(files, out):
    sio = skvideo_io()
    cache = {}
    for f in files:
        full = sio.vread(str(f))  # N,H,W,3 uint8 at full resolution
        idx = sample_indices(len(full), T)
        x = torch.from_numpy(full[idx]).permute(0, 3, 1, 2).float()
        cache[f.stem] = F.interpolate(x, size=(S, S), mode="bilinear", antialias=True).numpy()  # float32
    with open(out, "wb") as fh:
        pickle.dump(cache, fh)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=120)
    ap.add_argument("--data", type=Path, default=ROOT / "bench-output" / "toy")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    if not (a.data / "labels").exists():
        make_toy(a.data, videos=a.videos, seed=0)
    rows = sum((json.loads((a.data / "labels" / f"{s}.json").read_text()) for s in ("train", "validation")), [])
    (a.data / "labels" / "all.json").write_text(json.dumps(rows))
    files = [a.data / "videos" / f"{r['id']}.webm" for r in rows]
    n_src = sum(int(subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
                                    "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(f)],
                                   capture_output=True, text=True).stdout) for f in files)
    work = a.data.parent
    f32 = T * S * S * 3 * 4
    results = {"floor (ffmpeg -f null)": (timed(lambda: floor(files, a.workers)), None)}
    for dec in ("pyav", "skvideo"):
        out = work / f"frames-{dec}"
        t = timed(lambda: stage(a.data, out, dec, a.workers, len(files)))
        results[f"stage --decoder {dec}"] = (t, sum(p.stat().st_size for p in (out / "shards").glob("*.h5")))
    pkl = work / "naive.pkl"
    results["naive (full-res, torch resize, f32)"] = (timed(lambda: naive(files, pkl)), pkl.stat().st_size)
    base = results["floor (ffmpeg -f null)"][0]
    print(f"\n{len(files)} clips, {n_src} source frames, {a.workers} worker(s); output {T}x{S}x{S}x3\n")
    print(f"{'':38s}{'s':>7s}{'clips/s':>9s}{'frames/s':>10s}{'x floor':>9s}{'B/clip':>9s}{'f32/B':>7s}")
    for name, (t, size) in results.items():
        per = size / len(files) if size else None
        print(f"{name:38s}{t:7.2f}{len(files) / t:9.1f}{n_src / t:10.0f}{t / base:9.2f}"
              + (f"{per:9.0f}{f32 / per:7.1f}" if per else f"{'-':>9s}{'-':>7s}"))


if __name__ == "__main__":
    main()
