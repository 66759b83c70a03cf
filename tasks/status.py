"""The status words of a run, defined once: what a run folder's status.json, runs.parquet's `status`
column, the MLflow `status` tag and the report say about a run."""

COMPLETED = "completed"
DIVERGED = "diverged"
"""Trained to a NaN loss, or a streak of non-finite gradients (tasks.train.step)."""
FAILED = "failed"
"""The training process crashed, was killed, or ran past resources.timeout_s; a re-run resumes it."""
CORRUPT = "corrupt"
"""Trained, but its curve failed its checks (tasks.track.curves.curve_damage): left out of the fits, trained
again from the start by the next invocation."""
RUNNING = "running"
"""The MLflow tag while a run trains."""
PENDING = "pending"
"""In the plan, never started."""

FINISHED = (COMPLETED, DIVERGED)
"""A run in either state is skipped by a re-run of its sweep."""
