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
