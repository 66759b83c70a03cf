"""Events: what happened to a run at a step that its curve alone does not say, in Parquet beside the curve.

    skipped_update       the step's gradients (or loss) were not finite, and its update was not applied
    loss_spike           the step's train loss was over SPIKE_RATIO times the median of the SPIKE_WINDOW before
    checkpoint_rejected  at a resume, the newest checkpoint failed its manifest and an older one was used

One row an event: sweep, run_id, step, kind, count (the how-manyth of its kind in the run), value (the
loss, or the rejected checkpoint's step), detail, timestamp_ms. Events are committed with the curve
(RUN_DIR/events/part-<step>.parquet, the same PartLog) and dropped with it past a resumed checkpoint,
so a replayed step records its events once. MLflow shows them as metrics `events/<kind>` = count.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from pathlib import Path

import pyarrow as pa

from tasks.track.curves import CurveDamage, PartLog, read_parts

SKIPPED_UPDATE = "skipped_update"
LOSS_SPIKE = "loss_spike"
CHECKPOINT_REJECTED = "checkpoint_rejected"
KINDS = (SKIPPED_UPDATE, LOSS_SPIKE, CHECKPOINT_REJECTED)

SPIKE_RATIO = 2.0
SPIKE_WINDOW = 20
SPIKE_HISTORY = 5
"""A spike is judged only once this many steps are in the window: the first losses fall fast."""


def event_schema() -> pa.Schema:
    return pa.schema(
        [
            ("sweep", pa.string()),
            ("run_id", pa.string()),
            ("step", pa.int64()),
            ("kind", pa.string()),
            ("count", pa.int64()),
            ("value", pa.float64()),
            ("detail", pa.string()),
            ("timestamp_ms", pa.int64()),
        ]
    )


class EventLog(PartLog):
    """A run's events; `record` numbers each within its kind, counting those already committed."""

    def __init__(self, directory: Path, constants: dict):
        super().__init__(directory, constants, event_schema())
        self.counts: Counter = Counter()

    def truncate(self, after_step: int) -> None:
        super().truncate(after_step)
        self.counts = Counter(self.read().column("kind").to_pylist())

    def record(self, step: int, kind: str, value: float, detail: str, timestamp_ms: int) -> None:
        self.counts[kind] += 1
        self.append(
            step=step, kind=kind, count=self.counts[kind], value=value, detail=detail, timestamp_ms=timestamp_ms
        )
        print(f"event at step {step}: {kind}, {detail}", flush=True)


class SpikeWatch:
    """The running median of the last SPIKE_WINDOW finite train losses, and whether a loss spikes above it."""

    def __init__(self):
        self.window: deque[float] = deque(maxlen=SPIKE_WINDOW)

    def spike(self, loss: float) -> float | None:
        """The loss over the median before it, when that is above SPIKE_RATIO; None otherwise."""
        if not math.isfinite(loss):
            return None
        ratio = None
        if len(self.window) >= SPIKE_HISTORY:
            median = statistics.median(self.window)
            ratio = loss / median if median > 0 and loss > SPIKE_RATIO * median else None
        self.window.append(loss)
        return ratio


def read_events(directory: Path) -> pa.Table:
    return read_parts(directory, event_schema())


def event_damage(directory: Path) -> str | None:
    try:
        read_events(directory)
    except CurveDamage as err:
        return f"events part {err}"
    return None


def summary(events: pa.Table) -> dict:
    """The runs table's view of a run's events: a count of each kind, and a note naming their steps."""
    by_kind: dict[str, list[int]] = {k: [] for k in KINDS}
    for kind, step in zip(events.column("kind").to_pylist(), events.column("step").to_pylist()):
        by_kind[kind].append(step)
    note = "; ".join(
        f"{kind.replace('_', ' ')} at {', '.join(map(str, steps[:5]))}{' ...' if len(steps) > 5 else ''}"
        for kind, steps in by_kind.items()
        if steps
    )
    return {"skipped_updates": len(by_kind[SKIPPED_UPDATE]), "loss_spikes": len(by_kind[LOSS_SPIKE]), "events": note}
