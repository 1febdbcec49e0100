"""Picklable task callables that submitit runs, one class per stage.

A task pickles only its config (a frozen dataclass), and ``checkpoint`` makes
a preempted task requeue itself with the same arguments: a frames task simply
redoes its shard, which is safe because a shard only exists once complete.
Each ``__call__`` imports its stage module itself, so a job process loads only
its own stage: a frames task does not pay for torch, which training needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import submitit

from jobs.slurm import requeue_self, serve_tracking


@dataclass(frozen=True)
class FramesTask:
    cfg: object  # pipeline.frames.FramesConfig

    def __call__(self, shard: int) -> dict:
        from pipeline import frames  # this stage only (see the module docstring)

        return frames.run_shard(self.cfg, shard)

    def checkpoint(self, shard: int):
        return submitit.helpers.DelayedSubmission(self, shard)


@dataclass(frozen=True)
class VocabTask:
    cfg: object  # pipeline.vocab.VocabConfig

    def __call__(self, _part: int = 0) -> dict:
        from pipeline import vocab

        return vocab.run(self.cfg)

    def checkpoint(self, _part: int = 0):
        return submitit.helpers.DelayedSubmission(self, _part)  # short and idempotent: just rerun


@dataclass(frozen=True)
class TrainTask:
    """Training as a submitit job. On preemption it resubmits a fresh task for the
    same run dir; the new job finds the newest checkpoint by scanning, so nothing
    stale (no model state, no checkpoint path) travels through the queue."""

    cfg: object = None  # pipeline.train.TrainConfig; None for a sweep, whose points come as arguments

    def __call__(self, point=None) -> dict:
        from pipeline import train

        result = train.run(point if point is not None else self.cfg)
        if result["status"] == "preempted":
            # Checkpoint written: put this same job back in the queue. It restarts
            # with the same (config-only) pickle and resumes from the newest file.
            requeue_self()
        return result

    def checkpoint(self, point=None):
        return submitit.helpers.DelayedSubmission(type(self)(self.cfg), point)


@dataclass(frozen=True)
class EvaluateTask:
    cfg: object  # pipeline.evaluate.EvalConfig

    def __call__(self) -> dict:
        from pipeline import evaluate

        r = evaluate.run(self.cfg, progress=True)  # its bars go to the job's log, which the submitter's bar follows
        return {k: v for k, v in r.items() if k != "prompts"}  # the full table is in RUN_DIR/eval.json

    def checkpoint(self):
        return submitit.helpers.DelayedSubmission(self)  # idempotent: eval.json is replaced atomically


@dataclass(frozen=True)
class TrackingServerTask:
    """The chain's `mlflow server` as a SLURM job (jobs/slurm.py serve_tracking): it serves until
    every job named in its watch file has ended, and requeues itself on timeout or preemption."""

    store_uri: str
    folder: str

    def __call__(self) -> dict:
        return serve_tracking(self.store_uri, self.folder)

    def checkpoint(self):
        return submitit.helpers.DelayedSubmission(self)  # nothing to save: the store is the state
