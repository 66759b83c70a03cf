"""Faults a training process injects into itself for the fault suite (its tests and `scaling doctor`).

A sweep never sets them: they come from SCALING_FAULTS, the path of a JSON object, one key a fault:

    kill_at: [k, ...]         SIGKILL the process group once step k is done (each once, across resumes)
    stall_at: [k, seconds]    once step k is done, sleep (once across resumes): a run outliving its walltime
    kill_in_save: [k, where]  SIGKILL it in the checkpoint save at step k: "after_shard" (one file of
                              it written), "before_marker" (all written, not sealed), "after_marker"
    inf_grad_at: [k, ...]     the gradients of step k are infinite; its loss stays finite
    nan_loss_at: [k, ...]     the loss of step k is NaN
    nan_from: k               every loss from step k on is NaN
    spike_at: [k, ...]        the loss of step k is ten times itself
    fill_disk: [k, where, path]  before the curve flush ("curve") or the checkpoint write ("checkpoint")
                              of step k, a file at `path` takes every free byte of its filesystem
    forget_position: true     a resume restores neither the data position nor the RNG (the negative
                              control of the resume tests)

Every fault that fires prints `fault: <what>` to the run's log; that line is how a test knows it fired.
A kill or a stall fires once: it is recorded in `<SCALING_FAULTS>.fired` before it acts.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

SPIKE = 10.0


@dataclass(frozen=True)
class Faults:
    kill_at: tuple[int, ...] = ()
    stall_at: tuple = ()
    kill_in_save: tuple = ()
    inf_grad_at: tuple[int, ...] = ()
    nan_loss_at: tuple[int, ...] = ()
    nan_from: int | None = None
    spike_at: tuple[int, ...] = ()
    fill_disk: tuple = ()
    forget_position: bool = False
    resumed_at: int = 0
    """Where this process resumed, for forget_position (set by tasks.train.resume)."""
    source: Path | None = field(default=None, compare=False)

    @classmethod
    def from_env(cls) -> Faults:
        path = os.environ.get("SCALING_FAULTS")
        if not path:
            return cls()
        raw = json.loads(Path(path).read_text())
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}, source=Path(path))

    def loss(self, loss: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to report, the loss to differentiate) of optimizer step `step` (0-based; the faults
        and the curve count steps from 1)."""
        n = step + 1
        if n in self.spike_at:
            _say(f"loss x{SPIKE:g} at step {n}")
            loss = loss * SPIKE
        if n in self.nan_loss_at or (self.nan_from is not None and n >= self.nan_from):
            _say(f"NaN loss at step {n}")
            loss = loss * float("nan")
        if n in self.inf_grad_at:
            _say(f"infinite gradients at step {n}")
            return loss, loss * float("inf")
        return loss, loss

    def data_step(self, step: int) -> int:
        """The step whose batch step `step` reads: itself, unless the data position is forgotten."""
        return step - self.resumed_at if self.forget_position else step

    def after_step(self, done: int) -> None:
        if done in self.kill_at:
            self._kill(f"kill at step {done}")
        if self.stall_at and done == self.stall_at[0] and self._once(f"stall {done}"):
            _say(f"stall for {self.stall_at[1]} s at step {done}")
            time.sleep(self.stall_at[1])

    def in_save(self, step: int, where: str) -> None:
        """At `where` in the checkpoint save of `step`: "before_marker", "after_marker"."""
        if self.kill_in_save and tuple(self.kill_in_save) == (step, where):
            self._kill(f"kill in the checkpoint save at step {step}, {where.replace('_', ' ')}")

    @contextmanager
    def writing_checkpoint(self, step: int) -> Iterator[None]:
        """Around DeepSpeed's save: "after_shard" kills once its first file (of several) is written."""
        if not (self.kill_in_save and tuple(self.kill_in_save) == (step, "after_shard")):
            yield
            return
        real = torch.save

        def save_then_kill(*args, **kwargs):
            real(*args, **kwargs)
            self.in_save(step, "after_shard")

        torch.save = save_then_kill  # DeepSpeed's checkpoint engine calls torch.save by attribute
        try:
            yield
        finally:
            torch.save = real

    def before_write(self, step: int, what: str) -> None:
        if self.fill_disk and tuple(self.fill_disk[:2]) == (step, what) and self._once(f"fill {what} {step}"):
            path = Path(self.fill_disk[2])
            _say(f"filling the disk before the {what} write at step {step} ({path})")  # while the log can take it
            fill(path)

    def _once(self, what: str) -> bool:
        fired = self.source.with_name(self.source.name + ".fired")
        if fired.exists() and what in fired.read_text().splitlines():
            return False
        with open(fired, "a") as fh:
            fh.write(what + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _kill(self, what: str) -> None:
        if self._once(what):
            _say(what)
            os.killpg(os.getpgid(0), signal.SIGKILL)


def fill(path: Path) -> None:
    """Take every free byte of `path`'s filesystem: allocate what statvfs reports, then write until refused."""
    with open(path, "wb") as fh:
        stat = os.statvfs(path.parent)
        try:
            os.posix_fallocate(fh.fileno(), 0, stat.f_bavail * stat.f_frsize)
        except OSError:
            pass
        fh.seek(0, os.SEEK_END)
        chunk = b"\0" * 4096
        try:
            while True:
                os.write(fh.fileno(), chunk)
        except OSError:
            pass


def _say(what: str) -> None:
    print(f"fault: {what}", flush=True)
