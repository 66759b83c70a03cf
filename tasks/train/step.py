"""Step: the training loop of one process, one optimizer step at a time, with evaluation, logging,
checkpoints and the divergence rule."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tasks import status as st
from tasks.data.loader import train_batch, val_batches, val_windows, window_batch
from tasks.plan import RunSpec
from tasks.track.events import LOSS_SPIKE, SKIPPED_UPDATE, SpikeWatch
from tasks.train.resume import save
from tasks.train.setup import Session

DIVERGED_AFTER_SKIPS = 5
"""Updates skipped in a row (non-finite loss or gradients) that end a run as diverged."""


@dataclass(frozen=True)
class Outcome:
    status: str
    """tasks.status: completed or diverged (a crash never gets here)."""
    step: int
    train_loss: float
    val_loss: float
    wall_s: float
    """Training wall time over every invocation of the run."""


@torch.no_grad()
def evaluate(engine, val, spec: RunSpec, autocast, spans=None) -> float:
    """Mean validation loss; `spans`, the val stream's interval index where it has one, keeps windows inside them."""
    engine.eval()
    total, n = 0.0, 0
    batches = (
        val_batches(val, spec.seq_len, spec.micro_batch_size, spec.val_tokens)
        if spans is None
        else val_windows(val, spans, spec.seq_len, spec.micro_batch_size, spec.val_tokens)
    )
    for x, y in batches:
        with autocast:
            logits = engine(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        n += y.numel()
    engine.train()
    return total / n


def _batch(s: Session, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the step's batch, (batch_per_rank, seq_len) inputs and targets."""
    spec = s.spec
    step = s.faults.data_step(step)
    per_rank = spec.batch_tokens // spec.seq_len // s.world
    if s.train_spans is None:
        x, y = train_batch(s.train, step, s.rank, s.world, per_rank, spec.seq_len, spec.seed)
    else:
        x, y = window_batch(s.train, s.train_spans, step, s.rank, s.world, per_rank, spec.seq_len, spec.seed)
    return x.to(s.device), y.to(s.device)


def train_step(s: Session, step: int) -> tuple[float, float, bool]:
    """One optimizer step over its micro-batches; returns (mean train loss, global gradient norm, whether
    its update was skipped for non-finite gradients)."""
    x, y = _batch(s, step)
    losses, skipped_before = [], s.engine.skipped_steps
    for xm, ym in zip(x.split(s.spec.micro_batch_size), y.split(s.spec.micro_batch_size)):
        with s.autocast:
            logits = s.engine(xm)
        loss, differentiated = s.faults.loss(F.cross_entropy(logits.float().flatten(0, 1), ym.flatten()), step)
        s.engine.backward(differentiated)
        s.engine.step()
        losses.append(loss.detach())
    norm = s.engine.get_global_grad_norm()
    loss = torch.stack(losses).mean()
    if s.world > 1:  # the step's loss is the whole batch's, as one rank alone would have seen it
        torch.distributed.all_reduce(loss)  # a sum: gloo has no average
        loss /= s.world
    return (
        loss.item(),
        float("nan" if norm is None else norm),
        s.engine.skipped_steps > skipped_before,
    )


def train(s: Session, start: int, wall_before: float) -> Outcome:
    """Steps from `start` to the end of the schedule, or to divergence."""
    spec = s.spec
    t0 = t_last = time.time()
    last_logged, step_tokens = start, spec.batch_tokens
    train_loss = val_loss = float("nan")
    status, done, skipped_streak, spikes = st.COMPLETED, start, 0, SpikeWatch()
    for step in range(start, spec.steps):
        train_loss, grad_norm, skipped = train_step(s, step)
        done = step + 1
        # A skipped update leaves the weights as they were, so one is survived; a streak of them means
        # the run has blown up (its loss may even stay finite), and ends it.
        skipped_streak = skipped_streak + 1 if skipped else 0
        if s.rank == 0:
            record_events(s, done, train_loss, grad_norm, skipped, spikes)
        if skipped_streak >= DIVERGED_AFTER_SKIPS:
            status = st.DIVERGED
        last = done == spec.steps or status == st.DIVERGED
        evaluated = done % spec.eval_interval == 0 or last
        if evaluated:
            val_loss = evaluate(s.engine, s.val, spec, s.autocast, s.val_spans) if status == st.COMPLETED else math.nan
        if s.rank == 0 and (done % spec.log_interval == 0 or evaluated):
            now = time.time()
            s.curve.append(
                step=done,
                tokens_seen=done * step_tokens,
                flops=done * step_tokens * spec.flops_per_token,
                train_loss=train_loss,
                val_loss=val_loss if evaluated else float("nan"),
                lr_now=s.sched.get_last_lr()[0],
                grad_norm=grad_norm,
                tokens_per_s=(done - last_logged) * step_tokens / max(now - t_last, 1e-9),
                wall_s=wall_before + now - t0,
                timestamp_ms=int(now * 1000),
            )
            t_last, last_logged = now, done
        if status == st.DIVERGED:
            break
        if done % spec.checkpoint_interval == 0 and not last:
            save(s, done, wall_before + time.time() - t0)
        s.faults.after_step(done)
    return Outcome(status, done, train_loss, val_loss, wall_before + time.time() - t0)


def record_events(s: Session, step: int, loss: float, grad_norm: float, skipped: bool, spikes: SpikeWatch) -> None:
    now = int(time.time() * 1000)
    if skipped:
        s.events.record(
            step, SKIPPED_UPDATE, loss, f"update skipped: loss {loss:.4g}, gradient norm {grad_norm:.4g}", now
        )
    elif ratio := spikes.spike(loss):
        s.events.record(step, LOSS_SPIKE, loss, f"train loss {loss:.4g}, {ratio:.3g}x the running median", now)
