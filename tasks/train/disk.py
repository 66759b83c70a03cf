"""Disk full: a training process that runs out of space ends with one clear, retryable error.

What it leaves is what a resume needs: the checkpoints sealed before (tasks.train.resume) and the curve
parts committed before (tasks.track.curves). What it takes away is what it half wrote, the unsealed
checkpoint folder and any temporary part, so the space it held is free again for the retry.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from tasks.layout import CHECKPOINT_DONE, RunDir

EXIT_DISK_FULL = 75
"""The training process's exit code when its run folder's filesystem is full (EX_TEMPFAIL: try again)."""


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def is_disk_full(err: BaseException, path: Path) -> bool:
    """Whether `err` is a write that failed for want of space under `path`. torch's checkpoint writer
    raises a RuntimeError without an errno ("unexpected pos 128 vs 0"), so an I/O or runtime error on a
    filesystem with under 1 MiB free counts too."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, (OSError, RuntimeError)) and free_bytes(path) < 2**20


def clear_partial_writes(run: RunDir) -> list[Path]:
    """Remove the unsealed checkpoint folders and the temporary files of the run folder; returns them."""
    gone = [p for p in run.ckpt.glob("step*") if p.is_dir() and not (p / CHECKPOINT_DONE).exists()]
    gone += [p for p in run.path.rglob(".*.tmp-*") if p.is_file()]  # tasks.atomic's temporaries
    for p in gone:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return gone


def message(run: RunDir) -> str:
    return (
        f"disk full: no space left under {run.path} ({free_bytes(run.path)} bytes free); its sealed checkpoints "
        "and committed curve are intact: free space and the run resumes from its last checkpoint"
    )
