"""The frames stage end to end through the real CLI, local executor, real HDF5."""

import json
import os
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import T2V, t2v
from pipeline.toydata import TEMPLATES


def frames(toy, out, *extra, labels="train.json", videos=None, check=True):
    return t2v("frames", "--labels", toy / "labels" / labels, "--videos", videos or toy / "videos",
               "--out", out, *extra, check=check)


def manifest(out):
    return pd.read_csv(out / "manifest.csv", dtype={"id": str}, keep_default_na=False)


@pytest.fixture(scope="module")
def done(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("frames")
    r = frames(toy, out, "--shard-size", "10")
    return out, r


def _centroid(clip):
    """Foreground centroid per frame: pixels far from the clip's median frame."""
    x = clip.astype(float)
    fg = np.abs(x - np.median(x, axis=0)).sum(-1) > 60  # T,H,W
    ys, xs = np.mgrid[0:clip.shape[1], 0:clip.shape[2]]
    w = fg.sum((1, 2)) + 1e-6
    return (fg * xs).sum((1, 2)) / w, (fg * ys).sum((1, 2)) / w


def test_end_to_end_several_shards(done, toy):
    out, r = done
    labels = json.loads((toy / "labels" / "train.json").read_text())
    shards = sorted((out / "shards").glob("*.h5"))
    assert [p.name for p in shards] == [f"shard-{k:05d}.h5" for k in range(-(-len(labels) // 10))]
    m = manifest(out)
    assert list(m["id"]) == [row["id"] for row in labels]
    assert set(m["status"]) == {"ok"} and "ok=" + str(len(labels)) in r.stdout
    for col in ("id", "status", "shard", "index", "label", "template", "placeholders", "n_frames"):
        assert col in m.columns
    with h5py.File(shards[0], "r") as f:
        v = f["videos"]
        assert v.dtype == np.uint8 and v.shape == (10, 16, 32, 32, 3) and v.chunks == (1, 16, 32, 32, 3)
        assert [s.decode() for s in f["ids"][:]] == list(m["id"][:10])
        assert json.loads(f.attrs["config"])["frames"] == 16 and f.attrs["shard"] == 0


def test_clips_move_the_way_the_caption_says(done):
    out, _ = done
    m = manifest(out)
    right = {TEMPLATES["ltr"]: (0, 1), TEMPLATES["rtl"]: (0, -1), TEMPLATES["down"]: (1, 1),
             TEMPLATES["up"]: (1, -1)}
    checked = agree = 0
    for row in m.itertuples():
        if row.template not in right:
            continue
        with h5py.File(out / "shards" / row.shard, "r") as f:
            clip = f["videos"][row.index]
        axis, sign = right[row.template]
        c = _centroid(clip)[axis]
        checked += 1
        agree += np.sign(c[-1] - c[0]) == sign
    assert checked >= 20 and agree / checked >= 0.9


def test_rerun_writes_nothing(done, toy):
    out, _ = done
    files = sorted((out / "shards").glob("*.h5")) + [out / "manifest.csv"]
    before = [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in files]
    r = frames(toy, out, "--shard-size", "10")
    assert "0 to do" in r.stdout
    assert [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in files] == before


def test_bad_videos_are_counted_and_the_array_carries_on(toy, tmp_path):
    vids = tmp_path / "videos"
    shutil.copytree(toy / "videos", vids)
    labels = json.loads((toy / "labels" / "train.json").read_text())
    ids = [row["id"] for row in labels]
    (vids / f"{ids[0]}.webm").write_bytes(b"")  # zero-byte
    data = (vids / f"{ids[3]}.webm").read_bytes()
    (vids / f"{ids[3]}.webm").write_bytes(data[: len(data) // 2])  # truncated
    (vids / f"{ids[5]}.webm").unlink()  # missing
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(toy / "videos" / f"{ids[7]}.webm"), "-frames:v", "9",
                    "-c:v", "libvpx-vp9", "-deadline", "realtime", str(vids / "short.webm")], check=True)
    os.replace(vids / "short.webm", vids / f"{ids[7]}.webm")  # 9 frames < 16
    out = tmp_path / "out"
    r = frames(toy, out, "--shard-size", "4", videos=vids)
    m = manifest(out).set_index("id")
    assert m.loc[ids[0], "status"] == "corrupt" and m.loc[ids[3], "status"] == "corrupt"
    assert m.loc[ids[5], "status"] == "missing" and m.loc[ids[7], "status"] == "too_short"
    assert m.loc[ids[7], "n_frames"] == 9 and m.loc[ids[3], "reason"] and m.loc[ids[0], "reason"]
    assert (m["status"] == "ok").sum() == len(ids) - 4
    assert "missing=1, corrupt=2, too_short=1" in r.stdout
    assert (m.loc[ids[0], "index"]) == -1
    with h5py.File(out / "shards" / m.loc[ids[1], "shard"], "r") as f:
        assert f["videos"].shape[0] == 2 and f["rows/id"].shape[0] == 4  # ids[0] and ids[3] are corrupt


def test_stale_temp_file_and_killed_task(toy, tmp_path, done):
    ref, _ = done
    out = tmp_path / "out"
    # A task killed mid-write leaves a temporary file and no shard.
    p = subprocess.Popen([T2V, "frames", "--labels", toy / "labels" / "train.json", "--videos", toy / "videos",
                          "--out", out, "--shard-size", "10"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list((out / "shards").glob("*.tmp-*")) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert list((out / "shards").glob("*.tmp-*")), "the task never started writing"
    assert not (out / "manifest.csv").exists()
    for h5 in (out / "shards").glob("*.h5"):  # whatever exists must be whole
        with h5py.File(h5, "r") as f:
            assert f["rows/id"].shape[0] == 10
    frames(toy, out, "--shard-size", "10")
    assert not list((out / "shards").glob("*.tmp-*"))
    assert manifest(out).equals(manifest(ref))
    for h5 in sorted((ref / "shards").glob("*.h5")):
        with h5py.File(h5, "r") as a, h5py.File(out / "shards" / h5.name, "r") as b:
            assert np.array_equal(a["videos"][:], b["videos"][:])


def test_a_zombie_writer_counts_as_gone(tmp_path):
    # CI's container never reaps orphans: a SIGKILLed writer stays a zombie, and kill(pid, 0)
    # succeeds on a zombie. Its temporary must still be stale, or a rerun leaves it behind.
    import socket
    from pipeline.files import _state, owner_gone
    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["sleep", "30"])
    try:
        os.kill(dead.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while _state(dead.pid) != "Z":  # the helper alive() reads
            assert time.time() < deadline, "the killed child never became a zombie"
            time.sleep(0.02)
        host = socket.gethostname()
        assert owner_gone(tmp_path / f".shard-00000.h5.tmp-{host}-{dead.pid}")
        assert not owner_gone(tmp_path / f".shard-00000.h5.tmp-{host}-{live.pid}")
    finally:
        live.kill()
        live.wait()
        dead.wait()


def test_template_filter_and_config_mismatch(toy, tmp_path):
    out = tmp_path / "out"
    frames(toy, out, "--templates", TEMPLATES["ltr"], TEMPLATES["up"], "--shard-size", "50")
    assert set(manifest(out)["template"]) == {TEMPLATES["ltr"], TEMPLATES["up"]}
    r = frames(toy, out, "--templates", TEMPLATES["ltr"], TEMPLATES["up"], "--shard-size", "50",
               "--frames", "8", check=False)
    assert r.returncode == 2 and "frames=16 (this run: 8)" in r.stderr and "Traceback" not in r.stderr
    rows = json.loads((toy / "labels" / "train.json").read_text())
    first = next(i for i, row in enumerate(rows) if row["template"] == TEMPLATES["ltr"])
    changed = rows[:first] + rows[first + 1:]  # the labels changed under the same config
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    r = t2v("frames", "--labels", tmp_path / "changed.json", "--videos", toy / "videos", "--out", out,
            "--templates", TEMPLATES["ltr"], TEMPLATES["up"], "--shard-size", "50", check=False)
    assert r.returncode == 2 and "other samples" in r.stderr


@pytest.mark.parametrize("case", ["missing_labels", "not_json", "no_videos_dir", "unknown_template"])
def test_bad_input_is_one_clear_line(toy, tmp_path, case):
    labels, videos, extra = toy / "labels" / "train.json", toy / "videos", []
    if case == "missing_labels":
        labels = tmp_path / "nope.json"
    elif case == "not_json":
        labels = tmp_path / "bad.json"
        labels.write_text("{not json")
    elif case == "no_videos_dir":
        videos = tmp_path / "novideos"
    else:
        extra = ["--templates", "Pushing [something] from lfet to right"]
    r = t2v("frames", "--labels", labels, "--videos", videos, "--out", tmp_path / "o", *extra, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("t2v frames: error:")
    if case == "unknown_template":
        assert "did you mean 'Pushing [something] from left to right'" in lines[0]


def test_dry_run_prints_the_sbatch_array(toy, tmp_path):
    """Written for another site's cluster: with no cluster to ask here (no SLURM_CONF), the
    script is printed unchecked (tests/test_cluster.py checks requests against a real one)."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    r = t2v("frames", "--labels", toy / "labels" / "train.json", "--videos", toy / "videos", "--out", out,
            "--shard-size", "10", "--executor", "slurm", "--dry-run", "--partition", "cpu",
            "--array-parallelism", "2", env=env)
    assert "4 to do" in r.stdout
    assert "#SBATCH --array=0-3%2" in r.stdout and "#SBATCH --partition=cpu" in r.stdout
    assert "submitit.core._submit" in r.stdout and "#SBATCH --open-mode=append" in r.stdout
    assert not out.exists()  # a dry run touches nothing
