"""Clip grids: (rows x cols) of generated videos written as GIF and MP4 by ffmpeg."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import torch


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(..., 3, T, H, W) in [-1, 1] -> uint8 (..., T, H, W, 3)."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-4, -1).cpu().numpy()


def grid(videos: np.ndarray, pad: int = 1) -> np.ndarray:
    """uint8 (R, C, T, H, W, 3) -> (T, R*(H+pad)-pad, C*(W+pad)-pad, 3), white gutters."""
    r, c, t, h, w, _ = videos.shape
    out = np.full((t, r * (h + pad) - pad, c * (w + pad) - pad, 3), 255, np.uint8)
    for i in range(r):
        for j in range(c):
            out[:, i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = videos[i, j]
    return out


def write(frames: np.ndarray, path: Path, fps: int = 8, scale: int = 4) -> Path:
    """uint8 (T, H, W, 3) -> .gif or .mp4 (by suffix), upscaled with nearest neighbour.

    The MP4 is made for browsers: H.264 in yuv420p (the pixel format every browser
    decodes; it needs even sides, so an odd side gets one white row or column, the
    gutter colour), with the index moved to the front (+faststart) so playback can
    start before the whole file has arrived.
    """
    from .rundir import tmp_name

    t, h, w, _ = frames.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vf = f"scale={w * scale}:{h * scale}:flags=neighbor"
    if path.suffix.lower() == ".gif":  # grid.GIF is a GIF too
        vf += ",split[a][b];[a]palettegen=max_colors=128[p];[b][p]paletteuse"
        codec = ["-f", "gif"]
    else:
        vf += ",pad=ceil(iw/2)*2:ceil(ih/2)*2:0:0:white"
        codec = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-movflags", "+faststart", "-f", "mp4"]
    # Written aside and renamed: a failed encode leaves no empty or half file under the name.
    tmp = tmp_name(path)
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps),
           "-i", "-", "-vf", vf, *codec, str(tmp)]
    try:
        subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
