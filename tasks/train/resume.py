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

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tasks.atomic import fsync_dir, write_atomic
from tasks.layout import CHECKPOINT_DONE, complete_checkpoints

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

    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = root, keep

    def latest(self, on_reject=print) -> str | None:
        """The newest sealed checkpoint whose files match its manifest; each one rejected on the way is
        reported (with why) to `on_reject`."""
        for folder in reversed(complete_checkpoints(self.root)):
            if (why := damage(folder)) is None:
                return folder.name
            on_reject(f"checkpoint {folder.name} rejected: {why}")
        return None

    def save(self, engine, step: int, state: dict) -> None:
        tag = f"step{step}"
        if engine.global_rank == 0:  # a folder rejected before and written again is unsealed until sealed anew
            (self.root / tag / CHECKPOINT_DONE).unlink(missing_ok=True)
        torch.distributed.barrier()
        engine.save_checkpoint(str(self.root), tag=tag, client_state=state)
        torch.distributed.barrier()
        if engine.global_rank == 0:
            seal(self.root / tag, step)
            for old in complete_checkpoints(self.root)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        torch.distributed.barrier()


def data_position(s: Session, step: int) -> dict:
    # The batches are a function of these alone, so a resume from them sees the same tokens.
    loader = "random windows" if s.train_spans is None else "interval windows"
    return {"cache_key": s.cache.key, "loader": loader, "seed": s.spec.seed, "next_step": step}


def resume(s: Session) -> tuple[int, float]:
    """Load the newest complete checkpoint, if any; returns (the step to start from, wall seconds before)."""
    tag = s.ckpts.latest(on_reject=lambda why: s.rank == 0 and print(why, flush=True))
    if not tag:
        return 0, 0.0
    _, state = s.engine.load_checkpoint(str(s.ckpts.root), tag=tag)
    if state["data"] != data_position(s, state["step"]):
        raise SystemExit(
            f"{s.ckpts.root / tag} was trained on other data ({state['data']}); this run reads "
            f"{data_position(s, state['step'])}: remove {s.ckpts.root} to start the run again"
        )
    torch.set_rng_state(state["rng"])
    if s.rank == 0:
        s.curve.truncate(after_step=state["step"])
        print(f"resumed from {tag} (step {state['step']} of {s.spec.steps})", flush=True)
    return state["step"], state["wall_s"]


def save(s: Session, step: int, wall_s: float) -> None:
    """A checkpoint at `step`, after committing the curve up to it (so a resume truncates nothing it needs)."""
    rows = s.curve.flush() if s.rank == 0 else []
    state = {"step": step, "wall_s": wall_s, "rng": torch.get_rng_state(), "data": data_position(s, step)}
    s.ckpts.save(s.engine, step, state)
    if s.sender:
        s.sender.send(rows)
