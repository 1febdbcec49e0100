"""Clip grids: generated videos laid out as labelled frames and written as GIF and MP4 by ffmpeg.

A grid is one or more blocks side by side (one per run in a comparison), each of
rows x columns clips. Each row carries its prompt as text (held-out prompts marked),
each column its sample index, each block its title and the corner the step. The
labels are drawn once with Pillow at the output size; GIF and MP4 are then encoded
from the same frames, so they look the same.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .files import atomic_path

FONT_PX = 12
BAND = 18       # px: a row's prompt band, a header line
GUTTER = 2      # px between clips
BLOCK_GAP = 10  # px between blocks (runs) side by side
INK, PAPER, RULE = (20, 20, 20), (255, 255, 255), (150, 150, 150)
HELD_INK, HELD_PAPER = (150, 40, 0), (255, 228, 196)  # held-out prompts: dark orange on light orange
SCALE = 3  # nearest-neighbour upscale of a clip; 4 made the default 5x4 grid's GIF 2.77 MB


@dataclass(frozen=True)
class Block:
    """Columns of one run: uint8 (R, C, T, H, W, 3) clips under a title (empty for a single grid)."""
    videos: np.ndarray
    title: str = ""


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(..., 3, T, H, W) in [-1, 1] -> uint8 (..., T, H, W, 3)."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-4, -1).cpu().numpy()


def grid(videos: np.ndarray, pad: int = 1) -> np.ndarray:
    """uint8 (R, C, T, H, W, 3) -> (T, R*(H+pad)-pad, C*(W+pad)-pad, 3), white gutters, no labels."""
    r, c, t, h, w, _ = videos.shape
    out = np.full((t, r * (h + pad) - pad, c * (w + pad) - pad, 3), 255, np.uint8)
    for i in range(r):
        for j in range(c):
            out[:, i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = videos[i, j]
    return out


def _font():
    from PIL import ImageFont

    return ImageFont.load_default(size=FONT_PX)  # Pillow's bundled TrueType face (Aileron)


def _fit(draw, text: str, width: int, font) -> str:
    """The text, cut with an ellipsis where it would be wider than `width` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def labelled(blocks: list[Block], rows: list[str], held_out: list[bool], corner: str,
             scale: int = SCALE) -> np.ndarray:
    """Blocks side by side under two header lines -> uint8 (T, H, W, 3) frames.

    Header line 1: `corner` (the step) on the left, each block's title over its block;
    line 2: each column's sample index. Above each row of clips, a band with its prompt,
    across all blocks (every block shows the same prompts).
    """
    from PIL import Image, ImageDraw

    r, c, t, h, w, _ = blocks[0].videos.shape
    ch, cw = h * scale, w * scale
    block_w = c * (cw + GUTTER) - GUTTER
    width = len(blocks) * (block_w + BLOCK_GAP) - BLOCK_GAP
    height = 2 * BAND + r * (BAND + ch + GUTTER)
    # The labels: one still picture, drawn once and shared by every frame.
    sheet = Image.new("RGB", (width, height), PAPER)
    draw, font = ImageDraw.Draw(sheet), _font()
    draw.text((2, BAND // 2), corner, fill=INK, font=font, anchor="lm")
    corner_w = int(draw.textlength(corner, font=font)) + 8
    for b, block in enumerate(blocks):
        x0 = b * (block_w + BLOCK_GAP)
        if block.title:  # centred over its block, clear of the corner text
            room = block_w - (corner_w if b == 0 else 0)
            draw.text((x0 + block_w - room // 2, BAND // 2), _fit(draw, block.title, room, font), fill=INK,
                      font=font, anchor="mm")
            draw.line((x0, BAND - 1, x0 + block_w - 1, BAND - 1), fill=RULE)  # groups the block's columns
        for j in range(c):
            draw.text((x0 + j * (cw + GUTTER) + cw // 2, BAND + BAND // 2), _fit(draw, f"sample {j}", cw, font),
                      fill=INK, font=font, anchor="mm")
    for i, (text, held) in enumerate(zip(rows, held_out)):
        y = 2 * BAND + i * (BAND + ch + GUTTER)
        if held:
            draw.rectangle((0, y, width - 1, y + BAND - 2), fill=HELD_PAPER)
        label = f"{i + 1}. {text}" + ("   [held out]" if held else "")
        draw.text((3, y + BAND // 2), _fit(draw, label, width - 6, font), fill=HELD_INK if held else INK,
                  font=font, anchor="lm")
    out = np.repeat(np.asarray(sheet)[None], t, axis=0)  # T,H,W,3
    for b, block in enumerate(blocks):
        big = block.videos.repeat(scale, axis=3).repeat(scale, axis=4)  # R,C,T,h*s,w*s,3
        for i in range(r):
            y = 2 * BAND + i * (BAND + ch + GUTTER) + BAND
            for j in range(c):
                x = b * (block_w + BLOCK_GAP) + j * (cw + GUTTER)
                out[:, y:y + ch, x:x + cw] = big[i, j]
    return out


def write(frames: np.ndarray, path: Path, fps: int = 8, scale: int = 4) -> Path:
    """uint8 (T, H, W, 3) -> .gif or .mp4 (by suffix), upscaled with nearest neighbour.

    The MP4 is made for browsers: H.264 in yuv420p (the pixel format every browser
    decodes; it needs even sides, so an odd side gets one white row or column, the
    gutter colour), with the index moved to the front (+faststart) so playback can
    start before the whole file has arrived. The GIF takes one palette for the whole
    clip, without dithering (dither noise defeats both LZW and the encoder's reuse of
    unchanged pixels between frames, which keeps the still labels nearly free).
    """
    t, h, w, _ = frames.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vf = f"scale={w * scale}:{h * scale}:flags=neighbor"
    if path.suffix.lower() == ".gif":  # grid.GIF is a GIF too
        vf += ",split[a][b];[a]palettegen=max_colors=128[p];[b][p]paletteuse=dither=none"
        codec = ["-f", "gif"]
    else:
        vf += ",pad=ceil(iw/2)*2:ceil(ih/2)*2:0:0:white"
        codec = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-movflags", "+faststart", "-f", "mp4"]
    # The format is named, not taken from the suffix: ffmpeg writes a temporary name (files.atomic_path).
    with atomic_path(path) as tmp:
        cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", str(fps), "-i", "-", "-vf", vf, *codec, str(tmp)]
        subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)
    return path


def write_both(frames: np.ndarray, stem: Path, fps: int = 8) -> list[Path]:
    """Labelled frames (already at their size) -> STEM.gif and STEM.mp4, the same picture."""
    stem = Path(stem)
    return [write(frames, stem.with_name(f"{stem.name}.{ext}"), fps, scale=1) for ext in ("gif", "mp4")]
