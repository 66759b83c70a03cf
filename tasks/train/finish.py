"""Finish: the run's curve and events committed, its MLflow rows handed over, and status.json written last."""

from __future__ import annotations

import torch

from tasks.train.resume import commit
from tasks.train.setup import Session
from tasks.train.step import Outcome


def finish(s: Session, o: Outcome) -> None:
    if s.rank == 0:
        rows, events = commit(s, o.step)
        if s.sender:
            s.sender.send(rows, events)
        rows = s.curve.read().num_rows  # what collect holds the committed curve to
        s.run.write_status(
            status=o.status, step=o.step, train_loss=o.train_loss, val_loss=o.val_loss, wall_s=o.wall_s, rows=rows
        )
        print(f"{o.status}: step {o.step}, train_loss {o.train_loss:.4f}, val_loss {o.val_loss:.4f}", flush=True)
        if s.sender:  # bounded: what is still queued is in Parquet, and the flow re-sends the whole curve
            s.sender.close(timeout_s=10.0)
    torch.distributed.barrier()
