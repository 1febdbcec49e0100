"""Who owns a directory's work: the run-dir lock and the owners of temporary files.

``RunLock`` is an exclusive ``flock`` on ``RUN_DIR/.lock`` whose file names the holder (host, pid,
SLURM job). The kernel drops the lock when the holder exits, however it exits (SIGKILL included);
on NFS, Linux implements ``flock`` as a POSIX lock held by the server, which it drops once the
holder's host stops renewing its lease, so a dead holder never wedges the run dir. Where a file
system has no locks at all, the holder line decides: a holder on this host whose process is gone
is stale.

Which temporary files' writers are gone is ``files.owner_gone``'s to tell.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Optional

from .errors import UserError
from .files import alive, temp_path


class RunLock:
    """An exclusive lock on a run dir for as long as one training run works in it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: Optional[int] = None

    def acquire(self) -> Optional[str]:
        """None once held; else a line naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                return holder(self.path.parent) or "another process"
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            # No locks on this file system: the holder line is all there is.
            who = holder(self.path.parent)
            if who and not _stale(self.path):
                os.close(fd)
                return who
        job = os.environ.get("SLURM_JOB_ID")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()} {job or '-'}\n".encode(), 0)
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # no holder line left for a reader to trust
            os.close(self.fd)  # drops the flock
            self.fd = None

    def __del__(self):
        self.release()


def _stale(path: Path) -> bool:
    try:
        host, pid, _ = path.read_text().split()
    except (OSError, ValueError):
        return True
    return host == socket.gethostname() and not alive(int(pid))


def holder(run_dir: Path) -> Optional[str]:
    """Who holds the run dir's lock ("host vm, pid 123, SLURM job 45"), or None if nobody does."""
    path = Path(run_dir) / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None  # nobody holds it
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES) and (not path.stat().st_size or _stale(path)):
                return None
        parts = path.read_text().split()
    finally:
        os.close(fd)
    if len(parts) != 3:
        return "another process"
    host, pid, job = parts
    return f"host {host}, pid {pid}" + (f", SLURM job {job}" if job != "-" else "")


def check_out(path: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output directory that cannot take files: a regular file, a
    read-only folder, a full disk (a 64 KiB probe must fit)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p} is a file, not a directory")
    probe = temp_path(p / ".t2v-write-probe")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"{flag} {p} cannot be written: {e.strerror or e}") from None
    finally:
        probe.unlink(missing_ok=True)
