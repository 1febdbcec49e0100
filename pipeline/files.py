"""The one durable atomic write.

Every file the pipeline writes that someone may read while it is being written
(a shard, a checkpoint, manifest.csv, vocab files, eval.json, server.json, ...)
goes through ``atomic_write``: the content goes to a temporary name in the same
directory, is fsynced, renamed over the final name, and the directory is fsynced,
so a reader (or a crash) sees the old file or the new one, never half of one.
Temporary names are ``.NAME.tmp-HOST-PID``: unique across the nodes of a shared
file system, hidden from ``ls``, and never matched by the globs that find
finished files (``shard-*.h5``, ``step-*.pt``).
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def temp_path(final: Path) -> Path:
    """Where ``final`` is written before it is renamed into place."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def alive(pid: int) -> bool:
    """True if ``pid`` runs on this host. A zombie does not: a writer SIGKILLed as an orphan
    stays one for good where PID 1 never reaps (many containers), and kill(pid, 0) succeeds
    on it, so its temporaries and locks would never be called stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    return _state(pid) not in ("Z", "X")


def _state(pid: int) -> str:
    """The process state letter from /proc (R, S, Z, ...), or "" where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]  # the name in parentheses may hold spaces


def owner_gone(tmp: Path) -> bool:
    """True if ``tmp``'s writer (the HOST-PID of its name) is a process on this host that no
    longer runs. A writer on another host, or a name without an owner, is left alone: on a
    shared file system a temporary may belong to a live task elsewhere."""
    _, sep, owner = Path(tmp).name.rpartition(".tmp-")
    host, _, pid = owner.rpartition("-")
    if not sep or not pid.isdigit():
        return False
    if host and host != socket.gethostname():
        return False
    return not alive(int(pid))


def stale_temps(final: Path) -> list[Path]:
    """Temporary files of ``final`` left by writers that are gone (SIGKILL mid-write, say);
    a live writer's temporary, here or on another node, is never among them."""
    final = Path(final)
    return [p for p in final.parent.glob(f".{final.name}.tmp-*") if owner_gone(p)]


def remove_stale_temps(folder: Path, pattern: str) -> list[Path]:
    """Remove the temporaries matching ``pattern`` in ``folder`` whose writer is gone."""
    gone = [p for p in Path(folder).glob(pattern) if owner_gone(p)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """``with atomic_path(f) as tmp:`` write ``tmp`` by any means (h5py, torch.save, a
    subprocess); on a clean exit it becomes ``f`` durably, on an error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(final.parent)  # the rename itself survives a crash only once the directory is on disk


def atomic_write(final: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then rename, as ``atomic_path`` does."""
    with atomic_path(final) as tmp:
        write(tmp)
    return Path(final)


def write_text(final: Path, text: str) -> Path:
    return atomic_write(final, lambda p: p.write_text(text))


def write_json(final: Path, obj, **dumps) -> Path:
    return write_text(final, json.dumps(obj, **({"indent": 1} | dumps)))
