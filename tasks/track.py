"""Track: every logged step to Parquet (the source of truth) and to MLflow.

Curves are written as small Parquet parts, each committed by temp-file + fsync + rename, so a
killed run leaves only whole files (a killed ParquetWriter loses its whole file). MLflow gets
the same rows with the timestamps recorded in Parquet, which makes re-sending idempotent: MLflow
keys a metric by (key, step, timestamp, value) and drops exact repeats.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

CURVE_COLUMNS = [
    "sweep", "run_id", "arch", "n_params", "n_params_nonembed", "tokens", "lr",
    "step", "tokens_seen", "flops", "train_loss", "val_loss", "lr_now", "grad_norm",
    "tokens_per_s", "wall_s", "timestamp_ms",
]  # fmt: skip
METRICS = ["train_loss", "val_loss", "lr_now", "grad_norm", "tokens_per_s", "tokens_seen", "flops"]


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write so that `path` is either absent or whole; temp names start with '.' so readers skip them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


# --- MLflow ------------------------------------------------------------------------------------

def mlflow_client(uri: str):
    # A dead tracking server would otherwise block each call for minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def send_metrics(client, mlflow_run_id: str, rows: list[dict]) -> bool:
    """Log curve rows as one batch; returns False (and warns) if the store is unreachable."""
    from mlflow.entities import Metric

    metrics = [
        Metric(key, float(r[key]), int(r["timestamp_ms"]), int(r["step"]))
        for r in rows
        for key in METRICS
        if r.get(key) is not None and math.isfinite(float(r[key]))
    ]
    try:
        for i in range(0, len(metrics), 1000):
            client.log_batch(mlflow_run_id, metrics=metrics[i : i + 1000])
        return True
    except Exception as e:  # the Parquet curve stays complete; collect re-sends these rows
        log.warning("MLflow logging failed (%s); rows stay in Parquet and are re-sent later", e)
        return False


def tag_run(client, mlflow_run_id: str, tags: dict) -> None:
    """Tags that must not stop training when the store is unreachable."""
    from mlflow.entities import RunTag

    try:
        client.log_batch(mlflow_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    except Exception as e:
        log.warning("MLflow tagging failed (%s)", e)


def log_fit(client, mlflow_run_id: str, params: dict[str, str], metrics: dict[str, float]) -> None:
    """The fits' options and numbers (tasks.fit.scalars) on the sweep's parent run, in batches (MLflow takes
    at most 100 parameters and 1000 metrics a call)."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params_list = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(params_list), 100):
        client.log_batch(mlflow_run_id, params=params_list[i : i + 100])
    metric_list = [Metric(k, v, now, 0) for k, v in metrics.items() if math.isfinite(v)]
    for i in range(0, len(metric_list), 1000):
        client.log_batch(mlflow_run_id, metrics=metric_list[i : i + 1000])


def child_params(spec) -> dict:
    keys = ("arch", "size", "n_layer", "d_model", "n_params", "n_params_nonembed", "tokens", "steps", "lr", "seed",
            "batch_tokens", "seq_len", "flops", "zero_stage", "precision", "ranks")  # fmt: skip
    return {k: str(getattr(spec, k)) for k in keys}


def open_sweep(uri: str, sweep: str, artifact_root: Path, tags: dict) -> tuple[str, str]:
    """The sweep's experiment (created once, before any training process opens the store) and a new
    parent run for this invocation; returns (experiment_id, parent_run_id)."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(sweep)
    exp_id = exp.experiment_id if exp else client.create_experiment(sweep, (artifact_root / sweep).as_uri())
    parent = client.create_run(exp_id, run_name=f"sweep-{sweep}", tags={"sweep": sweep, "kind": "sweep", **tags})
    return exp_id, parent.info.run_id


def child_run(uri: str, exp_id: str, parent_id: str, spec) -> str:
    """The grid point's MLflow run: found by its run_id tag when the point ran before, else created."""
    client = mlflow_client(uri)
    found = client.search_runs([exp_id], filter_string=f"tags.run_id = '{spec.run_id}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {"mlflow.parentRunId": parent_id, "run_id": spec.run_id, "sweep": spec.sweep, "arch": spec.arch,
            "n_params": str(spec.n_params), "tokens": str(spec.tokens), "lr": str(spec.lr), "status": "running"}  # fmt: skip
    run = client.create_run(exp_id, run_name=spec.name, tags=tags)
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in child_params(spec).items()])
    return run.info.run_id


def finish_child(uri: str, mlflow_run_id: str, curve_dir: Path, status: str) -> None:
    """Re-send the whole Parquet curve (idempotent) and close the run with the point's status."""
    client = mlflow_client(uri)
    rows = read_curve(curve_dir).to_pylist()
    if send_metrics(client, mlflow_run_id, rows):
        client.set_tag(mlflow_run_id, "status", status)
        client.set_terminated(mlflow_run_id, "FINISHED" if status in ("completed", "diverged") else "FAILED")
