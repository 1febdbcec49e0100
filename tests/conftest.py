"""Shared fixtures: a real toy dataset (real VP9 encodes) and a CLI runner."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.toydata import make_toy

T2V = str(Path(sys.executable).with_name("t2v"))


def t2v(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    r = subprocess.run([T2V, *map(str, args)], capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"t2v {' '.join(map(str, args))} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    make_toy(out, videos=48, seed=0, progress=False)
    return out
