"""Collect: the sweep's runs.parquet (one row a run), curves.parquet (one row a logged step) and
events.parquet (one row an event: tasks.track.events).

Reads only what the runs wrote (status, timing, curve parts: tasks.layout.RunDir), so it can be re-run alone.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from tasks import status as st
from tasks.layout import Layout, RunDir, SweepDir
from tasks.plan import RunSpec
from tasks.track.curves import CurveDamage, curve_damage, curve_schema, read_curve, write_parquet_atomic
from tasks.track.events import event_damage, event_schema, read_events, summary

RUN_COLUMNS = [
    "sweep",
    "run_id",
    "name",
    "arch",
    "size",
    "n_layer",
    "d_model",
    "n_params",
    "n_params_nonembed",
    "tokens",
    "lr",
    "seed",
    "steps",
    "batch_tokens",
    "seq_len",
    "flops",
    "train_loss",
    "val_loss",
    "step",
    "wall_s",
    "process_s",
    "status",
    "message",
    "skipped_updates",
    "loss_spikes",
    "events",
]


def run_row(spec: RunSpec, run: RunDir) -> dict:
    status, timing = run.read_status(), run.read_timing()
    message = timing.get("message", "")
    if status.get("status") in st.FINISHED and (why := run_damage(run, status.get("rows"))):
        status, message = {**status, "status": st.CORRUPT}, f"{why}; the next invocation trains it again"
    row = {k: getattr(spec, k) for k in RUN_COLUMNS if hasattr(spec, k)}
    row.update(
        train_loss=status.get("train_loss", float("nan")),
        val_loss=status.get("val_loss", float("nan")),
        step=status.get("step", 0),
        wall_s=status.get("wall_s", float("nan")),
        process_s=timing.get("process_s", float("nan")),
        status=status.get("status") or (st.FAILED if run.path.exists() else st.PENDING),
        message=message,
        **summary(_read(read_events, run.events) or event_schema().empty_table()),
    )
    return row


def run_damage(run: RunDir, rows: int | None) -> str | None:
    """Why a finished run's curve or events cannot be trusted, or None."""
    return curve_damage(run.curve, rows) or event_damage(run.events)


def _read(reader, directory) -> pa.Table | None:
    try:
        return reader(directory)
    except CurveDamage:
        return None


def _with_sweep(table: pa.Table, sweep: str) -> pa.Table:
    i = table.schema.get_field_index("sweep")
    return table.set_column(i, "sweep", pa.array([sweep] * table.num_rows, pa.string()))


def collect(specs: list[RunSpec], layout: Layout, sweep: SweepDir) -> dict[str, int]:
    """Write the sweep's runs, curves and events tables for these runs; returns the runs counted by status."""
    rows = [run_row(s, layout.run(s.run_id)) for s in specs]
    write_parquet_atomic(pa.Table.from_pylist(rows).select(RUN_COLUMNS), sweep.runs)
    # A run is shared by every sweep that has it; its rows carry the sweep that collects them. A damaged
    # curve is left out whole (its run is `corrupt`); what a run still training or failed committed is in.
    sound = [(s.sweep, layout.run(s.run_id)) for s, row in zip(specs, rows) if row["status"] != st.CORRUPT]
    curves = [_with_sweep(t, name) for name, run in sound if (t := _read(read_curve, run.curve)) is not None]
    events = [_with_sweep(t, name) for name, run in sound if (t := _read(read_events, run.events)) is not None]
    write_parquet_atomic(pa.concat_tables(curves) if curves else curve_schema().empty_table(), sweep.curves)
    write_parquet_atomic(pa.concat_tables(events) if events else event_schema().empty_table(), sweep.events)
    return dict(sorted(Counter(r["status"] for r in rows).items()))
