"""Resume: DeepSpeed checkpoints that count only once complete and intact, and the data position they hold for.

DeepSpeed's checkpoints are not atomic, and its loader unpickles them. So each checkpoint gets a manifest
(every file's size and sha256), written and fsynced, and only then its COMPLETE marker. A resume verifies
the newest checkpoint against its manifest before DeepSpeed opens a byte of it: a missing, short,
changed or unlisted file rejects it, the log says why, and the previous checkpoint is tried. So a torn or
damaged checkpoint costs the steps since the one before it, never the run, and no file this run did not
write is ever unpickled.

The data order depends on (seed, step) alone, so restoring the step restores the data position exactly;
the checkpoint also records that position with the token cache and loader it holds for, and a resume
that would read other data stops instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tasks.atomic import fsync_dir, write_atomic
from tasks.layout import CHECKPOINT_DONE, complete_checkpoints
from tasks.track.events import CHECKPOINT_REJECTED
from tasks.train.faults import Faults

if TYPE_CHECKING:
    from tasks.train.setup import Session


MANIFEST = "MANIFEST.json"


def _files(folder: Path) -> dict[str, dict]:
    """Every file of a checkpoint folder but its seal, by relative path: size and sha256, each fsynced."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, CHECKPOINT_DONE)):
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        out[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": digest}
    return out


def seal(folder: Path, step: int) -> None:
    """The manifest of a checkpoint DeepSpeed has finished writing, then its COMPLETE marker."""
    write_atomic(folder / MANIFEST, json.dumps({"step": step, "files": _files(folder)}, indent=1))
    write_atomic(folder / CHECKPOINT_DONE, str(step))
    fsync_dir(folder.parent)


def damage(folder: Path) -> str | None:
    """Why a sealed checkpoint must not be loaded, or None when every file matches its manifest."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"no readable {MANIFEST} ({err})"
    found = _files(folder)
    for name, want in listed.items():
        if name not in found:
            return f"{name} is missing"
        if found[name] != want:
            return f"{name} does not match its manifest ({found[name]['size']} of {want['size']} bytes)"
    if extra := sorted(found.keys() - listed.keys()):
        return f"{extra[0]} is not in its manifest"
    return None


class Checkpoints:
    """DeepSpeed checkpoints under RUN_DIR/ckpt, sealed with a manifest and a marker DeepSpeed does not write."""

    def __init__(self, root: Path, faults: Faults = Faults(), keep: int = 2):
        self.root, self.faults, self.keep = root, faults, keep

    def latest(self) -> tuple[str | None, list[tuple[int, str]]]:
        """The newest sealed checkpoint whose files match its manifest, and the (step, why) of each newer one
        rejected on the way."""
        rejected = []
        for folder in reversed(complete_checkpoints(self.root)):
            if (why := damage(folder)) is None:
                return folder.name, rejected
            rejected.append((int(folder.name.removeprefix("step")), why))
        return None, rejected

    def save(self, engine, step: int, state: dict) -> None:
        tag = f"step{step}"
        if engine.global_rank == 0:  # a folder rejected before and written again is unsealed until sealed anew
            (self.root / tag / CHECKPOINT_DONE).unlink(missing_ok=True)
        torch.distributed.barrier()
        self.faults.before_write(step, "checkpoint")
        with self.faults.writing_checkpoint(step):
            engine.save_checkpoint(str(self.root), tag=tag, client_state=state)
        torch.distributed.barrier()
        if engine.global_rank == 0:
            self.faults.in_save(step, "before_marker")
            seal(self.root / tag, step)
            self.faults.in_save(step, "after_marker")
            for old in complete_checkpoints(self.root)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        torch.distributed.barrier()


def data_position(s: Session, step: int) -> dict:
    # The batches are a function of these alone, so a resume from them sees the same tokens.
    loader = "random windows" if s.train_spans is None else "interval windows"
    return {"cache_key": s.cache.key, "loader": loader, "seed": s.spec.seed, "next_step": step}


def resume(s: Session) -> tuple[int, float]:
    """Load the newest intact checkpoint, if any; returns (the step to start from, wall seconds before).

    Each newer checkpoint rejected on the way is in the log and the run's events."""
    tag, rejected = s.ckpts.latest()
    step = 0
    if tag:
        _, state = s.engine.load_checkpoint(str(s.ckpts.root), tag=tag)
        if state["data"] != data_position(s, state["step"]):
            raise SystemExit(
                f"{s.ckpts.root / tag} was trained on other data ({state['data']}); this run reads "
                f"{data_position(s, state['step'])}: remove {s.ckpts.root} to start the run again"
            )
        step = state["step"]
        if s.faults.forget_position:
            s.faults = dataclasses.replace(s.faults, resumed_at=step)
        else:
            torch.set_rng_state(state["rng"])
    if s.rank == 0:
        s.curve.truncate(after_step=step)
        s.events.truncate(after_step=step)
        for bad, why in rejected:
            detail = f"checkpoint step{bad} rejected: {why}; resuming from {tag or 'the start'}"
            s.events.record(step, CHECKPOINT_REJECTED, float(bad), detail, int(time.time() * 1000))
        if tag:
            print(f"resumed from {tag} (step {step} of {s.spec.steps})", flush=True)
    return step, state["wall_s"] if tag else 0.0


def save(s: Session, step: int, wall_s: float) -> None:
    """A checkpoint at `step`, after committing the curve and events up to it (so a resume truncates nothing
    it needs)."""
    rows, events = commit(s, step)
    state = {"step": step, "wall_s": wall_s, "rng": torch.get_rng_state(), "data": data_position(s, step)}
    s.ckpts.save(s.engine, step, state)
    if s.sender:
        s.sender.send(rows, events)


def commit(s: Session, step: int) -> tuple[list[dict], list[dict]]:
    """Rank 0 commits the pending curve rows and events; returns both."""
    if s.rank != 0:
        return [], []
    s.faults.before_write(step, "curve")
    return s.curve.flush(), s.events.flush()
