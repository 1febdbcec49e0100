"""Clip grids as files a browser plays: checked with the real ffprobe and a real decode."""

import json
import struct
import subprocess

import av
import numpy as np
import pytest

from pipeline.clips import grid, write


def probe(path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def top_level_boxes(path) -> list[str]:
    """The MP4's top-level box types in file order (ISO/IEC 14496-12 size + type headers)."""
    data, boxes, i = path.read_bytes(), [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", data[i + 8:i + 16])[0]
        boxes.append(kind.decode("latin-1"))
        assert size >= 8, (boxes, size)
        i += size
    return boxes


@pytest.fixture(scope="module")
def frames():
    # A 2x3 grid of 5x5 clips: 11x17 px, odd on both sides, so yuv420p needs padding.
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, (2, 3, 6, 5, 5, 3), dtype=np.uint8)
    g = grid(videos)
    assert g.shape == (6, 11, 17, 3)
    return g


def test_mp4_is_h264_yuv420p_even_sized_with_the_index_first(frames, tmp_path):
    path = write(frames, tmp_path / "step_000120.mp4", scale=1)
    (v,) = probe(path)["streams"]
    assert (v["codec_name"], v["pix_fmt"]) == ("h264", "yuv420p")
    assert (v["width"], v["height"]) == (18, 12)  # 17x11 padded up to even
    assert int(v["nb_frames"]) == 6
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # +faststart: playable while downloading


def test_mp4_pads_with_white_and_keeps_the_picture(frames, tmp_path):
    path = write(frames, tmp_path / "c.mp4", scale=4)
    with av.open(str(path)) as f:
        got = np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])
    assert got.shape == (6, 44, 68, 3)  # 4x of 11x17 is already even: no pad
    want = frames.repeat(4, axis=1).repeat(4, axis=2)
    # H.264 at crf 18 on random noise is lossy; the mean error stays small.
    assert np.abs(got.astype(int) - want).mean() < 12
    odd = write(frames, tmp_path / "odd.mp4", scale=1)
    with av.open(str(odd)) as f:
        first = next(f.decode(video=0)).to_ndarray(format="rgb24")
    assert first[:, -1].min() > 200 and first[-1].min() > 200  # the added column and row are white


def test_gif_beside_it_has_every_frame_at_the_same_size(frames, tmp_path):
    path = write(frames, tmp_path / "step_000120.gif", scale=4)
    (v,) = probe(path)["streams"]
    assert v["codec_name"] == "gif" and (v["width"], v["height"]) == (68, 44)
    with av.open(str(path)) as f:
        assert sum(1 for _ in f.decode(video=0)) == 6


ROWS = ["pushing red square from left to right", "moving blue plank up", "moving digit five down",
        "pushing red square from right to left", "moving yellow pillar up"]
HELD = [False, False, False, True, True]


@pytest.fixture(scope="module")
def default_grid():
    """What training writes by default: 5 prompts x 4 samples of 16 frames at 32 px, from a real
    (untrained, so noisy: the hardest case for a GIF) generator."""
    import torch

    from pipeline.clips import Block, labelled, to_uint8
    from pipeline.models import Generator

    torch.manual_seed(0)
    G = Generator(50, 16, 8, 16, 32, 64).eval()
    with torch.no_grad():
        videos = to_uint8(G(torch.randn(20, 50), torch.randn(20, 16, 16))).reshape(5, 4, 16, 32, 32, 3)
    return videos, labelled([Block(videos)], ROWS, HELD, "step 300")


def ink(region) -> int:
    """Pixels clearly darker than the paper: text drawn there."""
    return int((region.min(axis=-1) < 160).sum())


def test_labelled_grid_has_prompt_bands_column_headers_and_the_step(default_grid):
    from pipeline.clips import BAND, GUTTER, SCALE

    videos, frames = default_grid
    cell = 32 * SCALE
    assert frames.shape == (16, 2 * BAND + 5 * (BAND + cell + GUTTER), 4 * (cell + GUTTER) - GUTTER, 3)
    first = frames[0]
    assert ink(first[:BAND, :80]) > 20  # "step 300" in the corner
    for j in range(4):  # "sample j" over each column
        assert ink(first[BAND:2 * BAND, j * (cell + GUTTER):(j + 1) * (cell + GUTTER) - GUTTER]) > 20
    for i in range(5):
        y = 2 * BAND + i * (BAND + cell + GUTTER)
        band = first[y:y + BAND - 2]
        assert ink(band) > 50, i  # the prompt as text
        held = (np.abs(band[2, -5].astype(int) - (255, 228, 196)) < 3).all()  # the held-out band's colour
        assert held == HELD[i], i
        # The clip itself, upscaled with nearest neighbour, on every frame.
        np.testing.assert_array_equal(frames[:, y + BAND:y + BAND + cell:SCALE, :cell:SCALE], videos[i, 0])
    assert (frames[:, :2 * BAND] == frames[0, :2 * BAND]).all()  # the labels hold still


def test_gif_and_mp4_show_the_same_labelled_picture_and_the_gif_stays_small(default_grid, tmp_path):
    from pipeline.clips import write_both

    _, frames = default_grid
    gif, mp4 = write_both(frames, tmp_path / "step_000300")
    assert (gif.name, mp4.name) == ("step_000300.gif", "step_000300.mp4")
    assert gif.stat().st_size < 2**20, gif.stat().st_size  # was 2.77 MB unlabelled at 4x with dithering
    decoded = {}
    for p in (gif, mp4):
        with av.open(str(p)) as f:
            decoded[p.suffix] = np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])
    t, h, w, _ = frames.shape
    assert decoded[".gif"].shape == (t, h, w, 3)
    assert decoded[".mp4"].shape[:3] == (t, h + h % 2, w + w % 2)
    a, b = decoded[".gif"].astype(int), decoded[".mp4"][:, :h, :w].astype(int)
    assert np.abs(a - frames).mean() < 6 and np.abs(b - frames).mean() < 6 and np.abs(a - b).mean() < 8
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
