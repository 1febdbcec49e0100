"""Video decoding into small uint8 frame stacks, behind one interface.

``decode(path, size, decoder=...)`` returns every frame of a clip resized to
``size`` x ``size`` RGB as uint8 (N,H,W,3), or raises ``ClipError`` with the
manifest status (``missing`` / ``corrupt``). The resize happens inside the
decoder (ffmpeg's swscale), never as a full-resolution array in Python.

Two back ends: scikit-video (an ffmpeg subprocess piping raw frames) and PyAV
(libav in-process). A truncated file often decodes "successfully" with ffmpeg
exit code 0, so both compare the decoded frame count with the container's
declared length.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import av
import numpy as np

DECODERS = ("skvideo", "pyav")
RESIZE = ("squash", "center-crop")
MAX_FRAMES = 100_000  # a cap for ffmpeg's -vframes; skvideo needs a number


class ClipError(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


def _expected_frames(nb_frames, duration_s, fps) -> int | None:
    if nb_frames:
        return int(nb_frames)
    if duration_s and fps:
        return int(round(duration_s * fps))
    return None


def _check_length(n: int, expected: int | None, path) -> None:
    # Allow a frame or two of rounding; a real truncation loses far more.
    if n == 0:
        raise ClipError("corrupt", "no decodable frames")
    if expected and n < 0.9 * expected - 1:
        raise ClipError("corrupt", f"truncated: decoded {n} of {expected} frames")


def _hms(s: str) -> float | None:
    m = re.fullmatch(r"(\d+):(\d+):([\d.]+)", s.strip())
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None


def _rate(s) -> float | None:
    try:
        num, _, den = str(s).partition("/")
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None


def _filters(size: int, resize: str) -> list[tuple[str, str]]:
    """The ffmpeg filter chain both back ends run, so they give identical pixels."""
    crop = [("crop", "'min(iw,ih)':'min(iw,ih)'")] if resize == "center-crop" else []
    # "area" averages source pixels: a 240->32 downscale without aliasing.
    return crop + [("scale", f"{size}:{size}:flags=area"), ("format", "rgb24")]


def _decode_skvideo(path: Path, size: int, resize: str) -> np.ndarray:
    from ._skvideo_compat import skvideo_io  # the optional --decoder skvideo: its shim patches numpy

    sio = skvideo_io()
    # "-s" only tells skvideo the output shape; the filter does the work.
    out = {"-vframes": str(MAX_FRAMES), "-vf": ",".join(f"{n}={a}" for n, a in _filters(size, resize)),
           "-s": f"{size}x{size}", "-pix_fmt": "rgb24"}
    try:
        reader = sio.FFmpegReader(str(path), outputdict=out)
    except (ValueError, KeyError, IndexError, RuntimeError, OSError) as e:
        raise ClipError("corrupt", f"ffprobe found no video stream ({type(e).__name__})") from None
    try:
        frames = [f.copy() for f in reader.nextFrame()]
    finally:
        reader.close()
    info = reader.probeInfo.get("video", {})
    tags = info.get("tag", [])
    tags = {t.get("@key", "").upper(): t.get("@value") for t in (tags if isinstance(tags, list) else [tags])}
    duration = info.get("@duration") or (tags.get("DURATION") and _hms(tags["DURATION"]))
    expected = _expected_frames(info.get("@nb_frames"), float(duration) if duration else None,
                                _rate(info.get("@avg_frame_rate")) or _rate(info.get("@r_frame_rate")))
    _check_length(len(frames), expected, path)
    return np.stack(frames)


def _decode_pyav(path: Path, size: int, resize: str) -> np.ndarray:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise ClipError("corrupt", f"cannot open container ({type(e).__name__})") from None
    frames = []
    with container:
        if not container.streams.video:
            raise ClipError("corrupt", "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        expected = _expected_frames(stream.frames, None, None)
        if expected is None and stream.average_rate:
            dur = (float(stream.duration * stream.time_base) if stream.duration
                   else (container.duration / 1e6 if container.duration else None))
            expected = _expected_frames(None, dur, float(stream.average_rate))
        graph = av.filter.Graph()
        nodes = [graph.add_buffer(template=stream)]
        nodes += [graph.add(name, args) for name, args in _filters(size, resize)]
        graph.link_nodes(*nodes, graph.add("buffersink")).configure()
        try:
            for frame in container.decode(stream):
                graph.push(frame)
                frames.append(graph.pull().to_ndarray())
        except av.FFmpegError:
            pass  # keep what decoded; the length check below decides
    _check_length(len(frames), expected, path)
    return np.stack(frames)


def decode(path, size: int, decoder: str = "pyav", resize: str = "squash") -> np.ndarray:
    """All frames of ``path`` as uint8 (N, size, size, 3)."""
    path = Path(path)
    if not path.exists():
        raise ClipError("missing", "file not found")
    if os.path.getsize(path) == 0:
        raise ClipError("corrupt", "zero-byte file")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}")
    fn = _decode_skvideo if decoder == "skvideo" else _decode_pyav
    try:
        return fn(path, size, resize)
    except ClipError:
        raise
    except Exception as e:  # noqa: BLE001  bad bytes can fail anywhere in a decoder; one clip must not stop a shard
        raise ClipError("corrupt", f"{type(e).__name__}: {e}".strip()[:200]) from None


def sample_indices(n: int, t: int, stride: int | None = None, offset: int = 0) -> np.ndarray | None:
    """Which of ``n`` frames to keep: ``t`` spread evenly, or offset + k*stride.

    Returns None when the clip is too short for the request.
    """
    if stride is None:
        if n < t:
            return None
        return np.linspace(0, n - 1, t).round().astype(np.int64)
    last = offset + (t - 1) * stride
    if last >= n:
        return None
    return np.arange(offset, last + 1, stride, dtype=np.int64)
