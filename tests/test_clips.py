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
