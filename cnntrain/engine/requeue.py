"""SLURM requeue: with ``train.requeue = true`` and ``SLURM_JOB_ID`` in the environment,
a run stopped by SIGUSR1 (what ``#SBATCH --signal=USR1@90`` sends before the time limit
or a preemption) writes its checkpoint and then asks SLURM to put the job back in the
queue (``scontrol requeue $SLURM_JOB_ID``); the requeued job runs the same command,
which must carry ``--resume auto`` to continue."""
from __future__ import annotations

import os
import shutil
import subprocess

from cnntrain.recipe import Recipe


def wanted(recipe: Recipe, reason: str | None, is_main: bool) -> bool:
    return bool(recipe.train.requeue and reason == "SIGUSR1" and is_main and os.environ.get("SLURM_JOB_ID"))


def requeue() -> str:
    """Run ``scontrol requeue``; returns what happened, for the stop message."""
    job = os.environ["SLURM_JOB_ID"]
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return f"train.requeue: scontrol is not on PATH, job {job} was not requeued"
    try:
        done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"train.requeue: scontrol requeue {job} failed ({exc})"
    if done.returncode != 0:
        return f"train.requeue: scontrol requeue {job} failed: {(done.stderr or done.stdout).strip()[:200]}"
    return f"requeued SLURM job {job}"
