"""Checkpoint files: the one place that names them, finds them and reads them.

A run dir's checkpoints are ``checkpoints/step-NNNNNNNN.pt`` (the step, zero-padded
so names sort by step). The newest readable one is found by scanning, never
through a pointer file that a crash could leave half-written; a torn or foreign
file is skipped with a warning. Writing goes through ``files.atomic_path``, so a
name only ever stands for a whole file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_write, remove_stale_temps

FORMAT = 1  # the "format" key of a t2v checkpoint


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{int(step):08d}.pt"


def step_of(path: Path) -> int:
    """``.../step-00000120.pt`` -> 120."""
    return int(Path(path).stem.split("-")[1])


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints, newest first."""
    return sorted(checkpoint_dir(run_dir).glob("step-*.pt"), reverse=True)


def read_checkpoint(path: Path) -> dict:
    """One checkpoint file, or a one-line UserError when it is not one (torn, foreign, a folder)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises many kinds for a file that is not its own
        raise UserError(f"{path} is not a readable t2v checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "G_ema" not in state:
        raise UserError(f"{path} is not a t2v checkpoint")
    return state


def load_weights(part, weights: dict, where) -> None:
    """``part.load_state_dict(weights)`` (a module or an optimizer), or a one-line UserError when
    ``where`` holds another version of the model: a run trained before an architecture change
    can't be loaded into today's classes, and a traceback would not say so."""
    try:
        if isinstance(part, torch.nn.Module):
            want, have = set(part.state_dict()), set(weights)
            if want != have:
                odd = sorted(want ^ have)
                raise UserError(f"{where} holds weights of another model version ({len(odd)} key(s) differ, "
                                f"e.g. {odd[0]}); use the commit it was trained with (its MLflow run's "
                                "git_commit tag) or train a new run dir")
        part.load_state_dict(weights)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"{where} does not fit this version of the model: {str(e).splitlines()[0][:200]}") from None


def newest_checkpoint(run_dir: Path) -> tuple[Path | None, dict | None]:
    """The newest checkpoint that loads, and its state; torn or foreign files are skipped."""
    for p in checkpoint_paths(run_dir):
        try:
            return p, read_checkpoint(p)
        except UserError as e:  # a torn or foreign file: fall back to an older one
            print(f"warning: skipping unreadable checkpoint {p.name}: {e}", file=sys.stderr)
    return None, None


def newest_step(run_dir: Path) -> int:
    """The step of the newest readable checkpoint (0 if none): a torn newest file doesn't count."""
    _, state = newest_checkpoint(run_dir)
    return int(state["step"]) if state else 0


def load_latest(run_dir: Path) -> dict | None:
    """The newest checkpoint that loads, or None."""
    return newest_checkpoint(run_dir)[1]


def resolve(run_dir: Path, checkpoint=None) -> tuple[dict, Path]:
    """(state, path) of the newest readable checkpoint, or of ``checkpoint``: a step number or a path."""
    run_dir = Path(run_dir)
    if checkpoint is None:
        path, state = newest_checkpoint(run_dir)
        if state is None:
            raise UserError(f"no readable checkpoint in {run_dir}/checkpoints: train first (`t2v train`)")
        return state, path
    path = Path(checkpoint)
    if not path.exists() and str(checkpoint).isdigit():
        path = checkpoint_path(run_dir, int(checkpoint))
    if not path.is_file():
        have = ", ".join(p.name for p in checkpoint_paths(run_dir)) or "none"
        raise UserError(f"checkpoint {checkpoint} not found (in {run_dir}/checkpoints: {have})")
    return read_checkpoint(path), path


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write step's checkpoint durably, then drop all but the newest ``keep``."""
    remove_stale_temps(checkpoint_dir(run_dir), ".step-*.pt.tmp-*")  # a writer SIGKILLed mid-write left these
    final = atomic_write(checkpoint_path(run_dir, step), lambda p: torch.save(state, p))
    for old in checkpoint_paths(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    return final
