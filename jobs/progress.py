"""A live progress bar for a job the submitter waits on, read from the job's own log.

Training prints ``step N/M loss_G=.. loss_D=.. sec_per_step=..`` every tick and an evaluation's
tqdm bars (``evaluator:  45%|...| 180/400``) go to the same log; ``LogProgress`` follows that
file from a thread (reading only what was appended since the last look) and shows step / total,
s/step, the ETA and the last losses. The log stays where the job writes it.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

STEP = re.compile(r"step (\d+)/(\d+) (.*)")
BAR = re.compile(r"([A-Za-z][\w ]*?): +\d+%\|[^|]*\| *(\d+)/(\d+)")
EVAL = re.compile(r"step (\d+) eval: (.*)")


def _eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class LogProgress:
    """``with LogProgress(log, "train"):`` around a wait shows the job's progress on stderr."""

    def __init__(self, log: Path, desc: str, poll_s: float = 1.0, file=None):
        self.log, self.desc, self.poll_s = Path(log), desc, poll_s
        self.file = file or sys.stderr
        self.pos, self.bar, self.phase = 0, None, ""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "LogProgress":
        try:
            self.pos = self.log.stat().st_size  # a requeued or resumed job appends: earlier lines are old news
        except OSError:
            self.pos = 0
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.poll()  # the last lines
        if self.bar is not None:
            self.bar.close()

    def _loop(self) -> None:
        while not self.stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        try:
            with open(self.log, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except OSError:
            return  # not written yet (a pending job)
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if cut < 0:
            return
        self.pos += cut + 1
        for line in re.split(r"[\r\n]+", chunk[:cut + 1].decode(errors="replace")):
            self._line(line.strip())

    def _show(self, n: int, total: int, desc: str, postfix: str) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar.total != total or self.bar.desc != desc:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=desc, file=self.file, mininterval=0,
                            bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n}/{total} [{elapsed}{postfix}]")
        self.bar.n = n
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()

    def _line(self, line: str) -> None:
        if m := STEP.match(line):
            n, total = int(m[1]), int(m[2])
            kv = dict(re.findall(r"(\w+)=([-+\d.eE]+|nan|inf)", m[3]))
            sps = float(kv.get("sec_per_step", "nan"))
            parts = [f"{sps:.2f} s/step", f"ETA {_eta(sps * (total - n))}"] if sps == sps else []
            parts += [f"{k}={float(kv[k]):.3f}" for k in ("loss_G", "loss_D") if k in kv]
            self.phase = ", ".join(parts)
            self._show(n, total, self.desc, self.phase)
        elif m := EVAL.match(line):
            self.phase = f"eval at step {m[1]}: {m[2][:60]}"
            if self.bar is not None:
                self._show(self.bar.n, self.bar.total, self.desc, self.phase)
        elif m := BAR.search(line):
            self._show(int(m[2]), int(m[3]), f"{self.desc} ({m[1].strip()})", "")
