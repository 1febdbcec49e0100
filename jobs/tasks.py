"""Picklable task callables that submitit runs, one class per stage.

Heavy imports happen inside ``__call__`` (the submitting process stays light),
and ``checkpoint`` makes a preempted task requeue itself with the same
arguments: a frames task simply redoes its shard, which is safe because a
shard only exists once complete.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FramesTask:
    cfg: object  # pipeline.frames.FramesConfig

    def __call__(self, shard: int) -> dict:
        from pipeline.frames import run_shard

        return run_shard(self.cfg, shard)

    def checkpoint(self, shard: int):
        import submitit

        return submitit.helpers.DelayedSubmission(self, shard)


@dataclass(frozen=True)
class VocabTask:
    cfg: object  # pipeline.vocab.VocabConfig

    def __call__(self, _part: int = 0) -> dict:
        from pipeline.vocab import run

        return run(self.cfg)

    def checkpoint(self, _part: int = 0):
        import submitit

        return submitit.helpers.DelayedSubmission(self, _part)  # short and idempotent: just rerun


@dataclass(frozen=True)
class TrainTask:
    """Training as a submitit job. On preemption it resubmits a fresh task for the
    same run dir; the new job finds the newest checkpoint by scanning, so nothing
    stale (no model state, no checkpoint path) travels through the queue."""

    cfg: object = None  # pipeline.train.TrainConfig; None for a sweep, whose points come as arguments

    def __call__(self, point=None) -> dict:
        import os
        import subprocess

        from pipeline.train import run

        result = run(point if point is not None else self.cfg)
        if result["status"] == "preempted" and os.environ.get("SLURM_JOB_ID"):
            # Checkpoint written: put this same job back in the queue. It restarts
            # with the same (config-only) pickle and resumes from the newest file.
            job = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
            if int(os.environ.get("SLURM_PROCID", 0)) == 0:
                subprocess.run(["scontrol", "requeue", job], check=True)
        return result

    def checkpoint(self, point=None):
        import submitit

        return submitit.helpers.DelayedSubmission(type(self)(self.cfg), point)


@dataclass(frozen=True)
class EvaluateTask:
    cfg: object  # pipeline.evaluate.EvalConfig

    def __call__(self) -> dict:
        from pipeline.evaluate import run

        r = run(self.cfg, progress=True)  # its bars go to the job's log, which the submitter's bar follows
        return {k: v for k, v in r.items() if k != "prompts"}  # the full table is in RUN_DIR/eval.json

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(self)  # idempotent: eval.json is replaced atomically


@dataclass(frozen=True)
class TrackingServerTask:
    """The chain's `mlflow server` as a SLURM job (pipeline/tracking_server.py): it serves until
    every job named in its watch file has ended, and requeues itself on timeout or preemption."""

    store_uri: str
    folder: str

    def __call__(self) -> dict:
        from pipeline.tracking_server import serve

        return serve(self.store_uri, self.folder)

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(self)  # nothing to save: the store is the state
