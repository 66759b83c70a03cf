"""Curves: every logged step to Parquet, the source of truth (MLflow gets the same rows: tasks.track.mlflow_store).

A run's curve, and its events (tasks.track.events), are written as small Parquet parts (PartLog), each
committed by temp-file + fsync + rename, so a killed run leaves only whole files (a killed ParquetWriter
loses its whole file).
"""

from __future__ import annotations

import hashlib
import json
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


class PartLog:
    """Rows of one run by step, buffered in memory, committed to `<dir>/part-<last_step>.parquet` on flush."""

    def __init__(self, directory: Path, constants: dict, schema: pa.Schema):
        self.dir = Path(directory)
        self.constants = constants
        self.schema = schema
        self.pending: list[dict] = []

    def append(self, **row) -> None:
        self.pending.append({**self.constants, **row})

    def flush(self) -> list[dict]:
        """Commit pending rows as one part; returns them."""
        if not self.pending:
            return []
        rows, self.pending = self.pending, []
        table = pa.Table.from_pylist([{c: r.get(c) for c in self.schema.names} for r in rows], schema=self.schema)
        _write_part(table, self.dir / f"part-{rows[-1]['step']:09d}.parquet")
        return rows

    def truncate(self, after_step: int) -> None:
        """Drop rows past a checkpoint: a resumed run logs those steps again."""
        for part in sorted(self.dir.glob("part-*.parquet")):
            t = _read_part(part, self.schema)
            keep = t.filter(pa.compute.less_equal(t["step"], after_step))
            if keep.num_rows == t.num_rows:
                continue
            if keep.num_rows == 0:
                part.unlink()
            else:
                last = keep["step"][-1].as_py()
                _write_part(keep, self.dir / f"part-{last:09d}.parquet")
                if part.name != f"part-{last:09d}.parquet":
                    part.unlink()

    def read(self) -> pa.Table:
        return read_parts(self.dir, self.schema)


class CurveLog(PartLog):
    """A run's curve: one row a logged step (CURVE_COLUMNS)."""

    def __init__(self, directory: Path, constants: dict):
        super().__init__(directory, constants, curve_schema())


def curve_schema() -> pa.Schema:
    ints = {"n_params", "n_params_nonembed", "tokens", "step", "tokens_seen", "timestamp_ms"}
    strs = {"sweep", "run_id", "arch"}
    return pa.schema(
        [(c, pa.string() if c in strs else pa.int64() if c in ints else pa.float64()) for c in CURVE_COLUMNS]
    )


class CurveDamage(ValueError):
    """A curve part that cannot be read or whose rows are not the rows written; the message names the part."""


ROWS_DIGEST = b"scaling.rows_sha256"
"""Each part's own record of its rows. Parquet's page checksums cover the pages' bytes but not their
headers or the footer, where a flipped bit can still change a value unseen (2 of the 43,360 one-bit flips
of a part did); a digest of the decoded rows catches any change of a value."""


def _rows_digest(table: pa.Table, schema: pa.Schema) -> str:
    rows = json.dumps(table.cast(schema).to_pylist(), allow_nan=True)
    return hashlib.sha256(rows.encode()).hexdigest()


def _write_part(table: pa.Table, path: Path) -> None:
    digest = _rows_digest(table, table.schema)
    write_parquet_atomic(table.replace_schema_metadata({ROWS_DIGEST: digest.encode()}), path)


def _read_part(path: Path, schema: pa.Schema) -> pa.Table:
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        stored = (table.schema.metadata or {}).get(ROWS_DIGEST, b"").decode()
        table = table.cast(schema)
    except (OSError, ValueError, UnicodeDecodeError, pa.ArrowException) as err:  # pyarrow's errors for bad bytes
        raise CurveDamage(f"{path.name}: {err}") from None
    if stored != _rows_digest(table, schema):
        raise CurveDamage(f"{path.name}: its rows do not match the digest written with them")
    return table


def read_parts(directory: Path, schema: pa.Schema) -> pa.Table:
    """The committed rows, by step, every page checked against its checksum; CurveDamage if one fails.

    Temporary files of a writer killed mid-write are dot-named and never read."""
    parts = sorted(Path(directory).glob("part-*.parquet"))
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([_read_part(p, schema) for p in parts]).sort_by("step")


def read_curve(directory: Path) -> pa.Table:
    return read_parts(directory, curve_schema())


def curve_damage(directory: Path, rows: int | None) -> str | None:
    """Why a finished run's curve cannot be trusted (a damaged part, a repeated step, fewer or more rows
    than its status recorded), or None when it is whole."""
    try:
        steps = read_curve(directory).column("step").to_pylist()
    except CurveDamage as err:
        return f"curve part {err}"
    if len(set(steps)) != len(steps):
        return "the curve repeats a step"
    if rows is not None and len(steps) != rows:
        return f"the curve has {len(steps)} of the {rows} rows its run logged"
    return None
