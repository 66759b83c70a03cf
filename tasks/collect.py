"""Collect: the sweep's runs.parquet (one row a run) and curves.parquet (one row a logged step).

Reads only what the runs wrote (spec.json, status.json, curve parts), so it can be re-run alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from tasks.plan import RunSpec
from tasks.track import curve_schema, read_curve, write_parquet_atomic

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
]


def run_row(spec: RunSpec, run_dir: Path) -> dict:
    status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").is_file() else {}
    timing = json.loads((run_dir / "timing.json").read_text()) if (run_dir / "timing.json").is_file() else {}
    row = {k: getattr(spec, k) for k in RUN_COLUMNS if hasattr(spec, k)}
    row.update(
        train_loss=status.get("train_loss", float("nan")),
        val_loss=status.get("val_loss", float("nan")),
        step=status.get("step", 0),
        wall_s=status.get("wall_s", float("nan")),
        process_s=timing.get("process_s", float("nan")),
        status=status.get("status") or ("failed" if run_dir.exists() else "pending"),
        message=timing.get("message", ""),
    )
    return row


def _with_sweep(table: pa.Table, sweep: str) -> pa.Table:
    i = table.schema.get_field_index("sweep")
    return table.set_column(i, "sweep", pa.array([sweep] * table.num_rows, pa.string()))


def collect(specs: list[RunSpec], runs_root: Path, sweep_dir: Path) -> tuple[Path, Path]:
    """Write sweep_dir/runs.parquet and sweep_dir/curves.parquet for these grid points."""
    rows = [run_row(s, runs_root / s.run_id) for s in specs]
    runs = pa.Table.from_pylist(rows).select(RUN_COLUMNS)
    # A run is shared by every sweep that has its point; its rows carry the sweep that collects them.
    curves = [_with_sweep(read_curve(runs_root / s.run_id / "curve"), s.sweep) for s in specs]
    curves_table = pa.concat_tables(curves) if curves else curve_schema().empty_table()
    runs_path, curves_path = sweep_dir / "runs.parquet", sweep_dir / "curves.parquet"
    write_parquet_atomic(runs, runs_path)
    write_parquet_atomic(curves_table, curves_path)
    return runs_path, curves_path
