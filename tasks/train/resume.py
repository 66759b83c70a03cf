"""Resume: DeepSpeed checkpoints that count only once complete, and the data position they hold for.

A checkpoint counts only once its COMPLETE marker exists (DeepSpeed's own are not atomic). The data order
depends on (seed, step) alone, so restoring the step restores the data position exactly; the checkpoint
also records that position with the token cache and loader it holds for, and a resume that would read
other data stops instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tasks.layout import CHECKPOINT_DONE, complete_checkpoints

if TYPE_CHECKING:
    from tasks.train.setup import Session


class Checkpoints:
    """DeepSpeed checkpoints under RUN_DIR/ckpt with a completion marker DeepSpeed does not write."""

    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = root, keep

    def latest(self) -> str | None:
        done = complete_checkpoints(self.root)
        return done[-1].name if done else None

    def save(self, engine, step: int, state: dict) -> None:
        tag = f"step{step}"
        engine.save_checkpoint(str(self.root), tag=tag, client_state=state)
        torch.distributed.barrier()
        if engine.global_rank == 0:
            (self.root / tag / CHECKPOINT_DONE).write_text(str(step))
            for old in complete_checkpoints(self.root)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        torch.distributed.barrier()


def data_position(s: Session, step: int) -> dict:
    # The batches are a function of these alone, so a resume from them sees the same tokens.
    loader = "random windows" if s.train_spans is None else "interval windows"
    return {"cache_key": s.cache.key, "loader": loader, "seed": s.spec.seed, "next_step": step}


def resume(s: Session) -> tuple[int, float]:
    """Load the newest complete checkpoint, if any; returns (the step to start from, wall seconds before)."""
    tag = s.ckpts.latest()
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
