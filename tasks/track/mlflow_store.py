"""MLflow as a view of Parquet: a bounded client, outages that never stop a run, and the background sender.

Parquet is the source of truth and MLflow a view of it, so MLflow may lag but never stops a run:
- the trainer sends rows from a background thread (MetricSender): a slow or dead store never holds up
  a training step;
- every call is bounded (HTTP timeouts and retries below) and, once a store has failed, calls to it are
  skipped for OUTAGE_S instead of each waiting out its own timeout;
- what an outage skipped is in Parquet, and tasks.track.mlflow_runs re-sends a run's whole curve when it ends.
Re-sending is idempotent: rows carry the timestamps recorded in Parquet, and MLflow drops a metric
that repeats (key, step, timestamp, value) exactly.

    metrics at step = optimizer step: train_loss, val_loss, lr_now, grad_norm, tokens_per_s, tokens_seen,
    flops; and at step = tokens seen: by_tokens/train_loss, by_tokens/val_loss;
    events/<kind> at the step of each event (tasks.track.events): how many of that kind so far
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import queue
import threading
import time
from pathlib import Path

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

_down_until: dict[str, float] = {}


def mlflow_client(uri: str):
    # MLflow's own defaults (7 retries, 120 s timeout, backoff factor 2) hold one call to a dead HTTP
    # store for minutes; the environment still overrides these.
    for key, default in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, default)
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and uri not in _schema_ready:
        _create_schema(uri)
    return MlflowClient(tracking_uri=uri)


_schema_ready: set[str] = set()


def _create_schema(uri: str) -> None:
    """Open a SQLite store once under a lock beside it: a fresh store's first openers each try to create its
    tables, and all but one fail (`table ... already exists`). Once created, opening it only reads."""
    from mlflow.tracking import MlflowClient

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(db.with_name(db.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 -- an outage like any other: the calls that follow meet it too
        mark_down(uri, "creating the store", err)
        return
    _schema_ready.add(uri)


def available(uri: str) -> bool:
    """False for OUTAGE_S after a call to this store failed."""
    return time.monotonic() >= _down_until.get(uri, 0.0)


def mark_down(uri: str, what: str, err: Exception) -> None:
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


def event_metrics(events: list[dict]) -> list:
    from mlflow.entities import Metric

    return [Metric(f"events/{e['kind']}", float(e["count"]), int(e["timestamp_ms"]), int(e["step"])) for e in events]


def send_metrics(client, mlflow_run_id: str, rows: list[dict], events: list[dict] = ()) -> None:
    metrics = metrics_of(rows) + event_metrics(list(events))
    for i in range(0, len(metrics), BATCH):
        client.log_batch(mlflow_run_id, metrics=metrics[i : i + BATCH])


class MetricSender:
    """Sends curve rows and tags to one MLflow run from a background thread, in the order given.

    The training loop only enqueues. After a failure the sender skips work for OUTAGE_S: what it
    skips is in Parquet, and finish_child re-sends the whole curve when the run ends."""

    def __init__(self, uri: str, mlflow_run_id: str):
        self.uri, self.run_id = uri, mlflow_run_id
        self.failures = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="mlflow-sender", daemon=True)
        self._thread.start()

    def send(self, rows: list[dict], events: list[dict] = ()) -> None:
        if rows or events:
            self._queue.put(("metrics", (list(rows), list(events))))

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
                    send_metrics(client, self.run_id, *payload)
                else:
                    client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in payload.items()])
            except Exception as err:  # noqa: BLE001 -- see mark_down
                self.failures += 1
                mark_down(self.uri, f"logging {kind}", err)
