"""text2video: a SLURM-native pipeline for text-conditioned video GANs.

Each stage is one module with a plain ``run(cfg)`` that knows nothing about
SLURM (``frames``, later ``vocab``, ``train``, ``evaluate``); submission lives
in the thin ``jobs`` package and the ``t2v`` CLI ties them together.
"""

__version__ = "0.1.0"
