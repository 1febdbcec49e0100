"""Submission layer: experiment specs (``jobs/*.yaml``) and the executor glue.

Stages in ``pipeline`` expose plain functions; this package decides where they
run (in-process, local subprocesses, or SLURM through submitit).
"""
