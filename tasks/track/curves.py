"""Curves: every logged step to Parquet, the source of truth (MLflow gets the same rows: tasks.track.mlflow_store).

Curves are written as small Parquet parts, each committed by temp-file + fsync + rename, so a
killed run leaves only whole files (a killed ParquetWriter loses its whole file).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import atomic_path

CURVE_COLUMNS = [
    "sweep",
    "run_id",
    "arch",
    "n_params",
    "n_params_nonembed",
    "tokens",
    "lr",
    "step",
    "tokens_seen",
    "flops",
    "train_loss",
    "val_loss",
    "lr_now",
    "grad_norm",
    "tokens_per_s",
    "wall_s",
    "timestamp_ms",
]


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write so that `path` is either absent or whole (tasks.atomic); readers skip the dot-named temporary."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)


class CurveLog:
    """A run's curve: rows buffered in memory, committed to `<dir>/part-<last_step>.parquet` on flush."""

    def __init__(self, directory: Path, constants: dict):
        self.dir = Path(directory)
        self.constants = constants
        self.pending: list[dict] = []

    def append(self, **row) -> None:
        self.pending.append({**self.constants, **row})

    def flush(self) -> list[dict]:
        """Commit pending rows as one part; returns them."""
        if not self.pending:
            return []
        rows, self.pending = self.pending, []
        table = pa.Table.from_pylist([{c: r.get(c) for c in CURVE_COLUMNS} for r in rows], schema=curve_schema())
        write_parquet_atomic(table, self.dir / f"part-{rows[-1]['step']:09d}.parquet")
        return rows

    def truncate(self, after_step: int) -> None:
        """Drop rows past a checkpoint: a resumed run logs those steps again."""
        for part in sorted(self.dir.glob("part-*.parquet")):
            t = pq.read_table(part)
            keep = t.filter(pa.compute.less_equal(t["step"], after_step))
            if keep.num_rows == t.num_rows:
                continue
            if keep.num_rows == 0:
                part.unlink()
            else:
                last = keep["step"][-1].as_py()
                write_parquet_atomic(keep, self.dir / f"part-{last:09d}.parquet")
                if part.name != f"part-{last:09d}.parquet":
                    part.unlink()

    def read(self) -> pa.Table:
        return read_curve(self.dir)


def curve_schema() -> pa.Schema:
    ints = {"n_params", "n_params_nonembed", "tokens", "step", "tokens_seen", "timestamp_ms"}
    strs = {"sweep", "run_id", "arch"}
    return pa.schema(
        [(c, pa.string() if c in strs else pa.int64() if c in ints else pa.float64()) for c in CURVE_COLUMNS]
    )


def read_curve(directory: Path) -> pa.Table:
    parts = sorted(Path(directory).glob("part-*.parquet"))
    if not parts:
        return curve_schema().empty_table()
    return pa.concat_tables([pq.read_table(p).cast(curve_schema()) for p in parts]).sort_by("step")
