"""Track, MLflow side: the sweep's experiment, runs, parameters, tags and metrics.

    experiment   the sweep's name
    parent run   sweep-<name>, one per invocation; tags kind=sweep, sweep, code_version, sweep_file;
                 artifacts: the report, fits.json, the runs and curves tables, the sweep file
    child run    one per grid point, named like the point (mamba-350m-7B-lr1.5e-3) and found again by
                 its run_id tag when the sweep is re-run (never duplicated);
                 params: arch, size, n_params, tokens, tokens_per_param, lr, steps, flops, ... (child_params)
                 tags: kind=point, run_id, sweep, arch, size, status (running | completed | diverged | failed)
                 metrics at step = optimizer step: train_loss, val_loss, lr_now, grad_norm, tokens_per_s,
                 tokens_seen, flops; and at step = tokens seen: by_tokens/train_loss, by_tokens/val_loss

Parquet is the source of truth and MLflow a view of it, so MLflow may lag but never stops a run:
- the trainer sends rows from a background thread (MetricSender): a slow or dead store never holds up
  a training step;
- every call is bounded (HTTP timeouts and retries below) and, once a store has failed, calls to it are
  skipped for OUTAGE_S instead of each waiting out its own timeout;
- when a point ends, finish_child re-sends its whole Parquet curve and records what reached the store
  in <run_dir>/mlflow.json; a point whose record is missing or stale is sent again at the end of the
  sweep (sync) and by every later invocation, including one that skips the point's training.
Re-sending is idempotent: rows carry the timestamps recorded in Parquet, and MLflow drops a metric
that repeats (key, step, timestamp, value) exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from pathlib import Path

from tasks.track import read_curve

log = logging.getLogger(__name__)

METRICS = ["train_loss", "val_loss", "lr_now", "grad_norm", "tokens_per_s", "tokens_seen", "flops"]
BY_TOKENS = ["train_loss", "val_loss"]  # also logged with step = tokens seen, as by_tokens/<name>
BATCH = 1000  # MLflow takes at most 1000 metrics a call
OUTAGE_S = 60.0
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
SYNCED = "mlflow.json"

_down_until: dict[str, float] = {}


def mlflow_client(uri: str):
    # MLflow's own defaults (7 retries, 120 s timeout, backoff factor 2) hold one call to a dead HTTP
    # store for minutes; the environment still overrides these.
    for key, default in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, default)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def available(uri: str) -> bool:
    """False for OUTAGE_S after a call to this store failed."""
    return time.monotonic() >= _down_until.get(uri, 0.0)


def _failed(uri: str, what: str, err: Exception) -> None:
    """Any exception of a store call counts as an outage: HTTP, SQL and MLflow's own errors all mean
    the same to a run, which goes on with Parquet."""
    _down_until[uri] = time.monotonic() + OUTAGE_S
    log.warning(
        "MLflow %s failed (%s: %s); Parquet has every row, they are sent when %s answers again",
        what,
        type(err).__name__,
        err,
        uri,
    )


def metrics_of(rows: list[dict]) -> list:
    """MLflow metrics of curve rows: each at its step, and the losses again at step = tokens seen."""
    from mlflow.entities import Metric

    out = []
    for r in rows:
        ts = int(r["timestamp_ms"])
        finite = {k: float(r[k]) for k in METRICS if r.get(k) is not None and math.isfinite(float(r[k]))}
        out += [Metric(k, v, ts, int(r["step"])) for k, v in finite.items()]
        out += [Metric(f"by_tokens/{k}", finite[k], ts, int(r["tokens_seen"])) for k in BY_TOKENS if k in finite]
    return out


def send_metrics(client, mlflow_run_id: str, rows: list[dict]) -> None:
    metrics = metrics_of(rows)
    for i in range(0, len(metrics), BATCH):
        client.log_batch(mlflow_run_id, metrics=metrics[i : i + BATCH])


class MetricSender:
    """Sends curve rows and tags to one MLflow run from a background thread, in the order given.

    The training loop only enqueues. After a failure the sender skips work for OUTAGE_S: what it
    skips is in Parquet, and finish_child re-sends the whole curve when the point ends."""

    def __init__(self, uri: str, mlflow_run_id: str):
        self.uri, self.run_id = uri, mlflow_run_id
        self.failures = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="mlflow-sender", daemon=True)
        self._thread.start()

    def send(self, rows: list[dict]) -> None:
        if rows:
            self._queue.put(("metrics", list(rows)))

    def tag(self, tags: dict) -> None:
        self._queue.put(("tags", dict(tags)))

    def close(self, timeout_s: float = 10.0) -> bool:
        """Wait up to `timeout_s` for what is queued; True when all of it reached the store."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive() and self.failures == 0

    def _loop(self) -> None:
        from mlflow.entities import RunTag

        client = mlflow_client(self.uri)
        while (item := self._queue.get()) is not None:
            kind, payload = item
            if not available(self.uri):
                self.failures += 1
                continue
            try:
                if kind == "metrics":
                    send_metrics(client, self.run_id, payload)
                else:
                    client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in payload.items()])
            except Exception as err:  # noqa: BLE001 -- see _failed
                self.failures += 1
                _failed(self.uri, f"logging {kind}", err)


def child_params(spec) -> dict[str, str]:
    keys = (
        "arch",
        "size",
        "n_layer",
        "d_model",
        "n_params",
        "n_params_nonembed",
        "tokens",
        "steps",
        "lr",
        "seed",
        "batch_tokens",
        "seq_len",
        "flops",
        "zero_stage",
        "precision",
        "ranks",
    )
    return {**{k: str(getattr(spec, k)) for k in keys}, "tokens_per_param": f"{spec.tokens / spec.n_params:.3g}"}


def open_sweep(uri: str, sweep: str, artifact_root: Path, tags: dict) -> tuple[str, str]:
    """The sweep's experiment (created once, before any training process opens the store) and a new
    parent run for this invocation; returns (experiment_id, parent_run_id). Raises if the store fails."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(sweep)
    exp_id = exp.experiment_id if exp else client.create_experiment(sweep, (artifact_root / sweep).as_uri())
    parent = client.create_run(exp_id, run_name=f"sweep-{sweep}", tags={"sweep": sweep, "kind": "sweep", **tags})
    return exp_id, parent.info.run_id


def child_run(uri: str, experiment_id: str, parent_id: str, spec) -> str | None:
    """The grid point's MLflow run, found by its run_id tag or created; None when the store fails."""
    if not available(uri):
        return None
    try:
        return _find_or_create(mlflow_client(uri), experiment_id, parent_id, spec)
    except Exception as err:  # noqa: BLE001 -- see _failed
        _failed(uri, f"opening the run of {spec.name}", err)
        return None


def _find_or_create(client, experiment_id: str, parent_id: str, spec) -> str:
    from mlflow.entities import Param

    found = client.search_runs([experiment_id], filter_string=f"tags.run_id = '{spec.run_id}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {
        "mlflow.parentRunId": parent_id,
        "kind": "point",
        "run_id": spec.run_id,
        "sweep": spec.sweep,
        "arch": spec.arch,
        "size": spec.size,
        "status": "running",
    }
    run = client.create_run(experiment_id, run_name=spec.name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in child_params(spec).items()])
    return run.info.run_id


def finish_child(uri: str, experiment_id: str | None, parent_id: str | None, spec, run_dir: Path, status: str) -> bool:
    """Bring the point's MLflow run up to its Parquet curve and final status; True once the store has it
    all (then, or already before: <run_dir>/mlflow.json says what was sent where)."""
    if experiment_id is None or parent_id is None:
        return False
    curve = read_curve(Path(run_dir) / "curve").to_pylist()
    state = {"status": status, "rows": len(curve), "last_timestamp_ms": curve[-1]["timestamp_ms"] if curve else None}
    key = f"{uri} experiment {experiment_id}"
    record = _read_synced(run_dir)
    if record.get(key, {}).get("state") == state:
        return True
    if not available(uri):
        return False
    try:
        client = mlflow_client(uri)
        mlflow_run_id = _find_or_create(client, experiment_id, parent_id, spec)
        send_metrics(client, mlflow_run_id, curve)
        client.set_tag(mlflow_run_id, "status", status)
        client.set_terminated(mlflow_run_id, "FINISHED" if status in ("completed", "diverged") else "FAILED")
    except Exception as err:  # noqa: BLE001 -- see _failed
        _failed(uri, f"finishing the run of {spec.name}", err)
        return False
    record[key] = {"mlflow_run_id": mlflow_run_id, "state": state}
    tmp = Path(run_dir) / f".{SYNCED}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, Path(run_dir) / SYNCED)
    return True


def _read_synced(run_dir: Path) -> dict:
    path = Path(run_dir) / SYNCED
    return json.loads(path.read_text()) if path.is_file() else {}


def log_fit(client, mlflow_run_id: str, params: dict[str, str], metrics: dict[str, float]) -> None:
    """The fits' options and numbers (tasks.fit.scalars) on the sweep's parent run, in batches (MLflow takes
    at most 100 parameters and 1000 metrics a call)."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params_list = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(params_list), 100):
        client.log_batch(mlflow_run_id, params=params_list[i : i + 100])
    metric_list = [Metric(k, v, now, 0) for k, v in metrics.items() if math.isfinite(v)]
    for i in range(0, len(metric_list), BATCH):
        client.log_batch(mlflow_run_id, metrics=metric_list[i : i + BATCH])
