"""GIF and MP4 size of a default labelled clip grid (5 prompts x 4 samples, 16 frames, 32 px).

The clips come from a real, untrained generator: noisy, the hardest case for GIF's LZW.
Prints the sizes at 2x, 3x (what training writes) and 4x upscale.

    .venv/bin/python bench/clip_size.py
"""

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.clips import Block, labelled, to_uint8, write_both  # noqa: E402
from pipeline.models import Generator  # noqa: E402

ROWS = ["pushing red square from left to right", "moving blue plank up", "moving digit five down",
        "pushing red square from right to left", "moving yellow pillar up"]

torch.manual_seed(0)
G = Generator(50, 16, 8, 16, 32, 64).eval()
with torch.no_grad():
    videos = to_uint8(G(torch.randn(20, 50), torch.randn(20, 16, 16))).reshape(5, 4, 16, 32, 32, 3)
with tempfile.TemporaryDirectory() as d:
    for scale in (2, 3, 4):
        frames = labelled([Block(videos)], ROWS, [False, False, False, True, True], "step 300", scale)
        gif, mp4 = write_both(frames, Path(d) / f"s{scale}")
        print(f"{scale}x: {frames.shape[2]}x{frames.shape[1]} px, GIF {gif.stat().st_size / 1024:.0f} KB, "
              f"MP4 {mp4.stat().st_size / 1024:.0f} KB")
