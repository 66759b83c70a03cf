"""The sweep's MLflow experiment, its parent run per invocation, and a child run per run of the grid.

    experiment   the sweep's name
    parent run   sweep-<name>, one per invocation; tags kind=sweep, sweep, code_version, sweep_file;
                 artifacts: the report, fits.json, the runs, curves and events tables, the sweep file;
                 the fits' parameters and metrics (fit.<arch>.<law>.<name>: tasks.fit.scalars)
    child run    one per run of the grid, named like it (mamba-350m-7B-lr1.5e-3) and found again by its
                 run_id tag when the sweep is re-run (never duplicated);
                 params: arch, size, n_params, tokens, tokens_per_param, lr, steps, flops, ... (child_params)
                 tags: kind=run, run_id, sweep, arch, size, status (tasks.status: running | completed | ...)
                 metrics: the curve's rows and the run's events (tasks.track.mlflow_store)

When a run ends, finish_child re-sends its whole Parquet curve and events and records what reached the store in the
run folder's mlflow.json; a run whose record is missing or stale is sent again at the end of the sweep
(sync_runs) and by every later invocation, including one that skips the run's training.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tasks import status as st
from tasks.fit.scalars import fit_scalars
from tasks.layout import Layout, RunDir, SweepDir
from tasks.track.curves import CurveDamage, read_curve
from tasks.track.events import read_events
from tasks.track.mlflow_store import BATCH, available, mark_down, mlflow_client, send_metrics


@dataclass(frozen=True)
class Tracking:
    """The sweep's MLflow experiment and this invocation's parent run; both None while the store is
    unreachable (the sweep goes on with Parquet alone, and `sync_runs` catches MLflow up)."""

    uri: str
    experiment_id: str | None
    parent_run_id: str | None


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


def open_sweep(uri: str, sweep: str, artifact_root: Path | None, tags: dict) -> tuple[str, str]:
    """The sweep's experiment (created once, before any training process opens the store) and a new
    parent run for this invocation; returns (experiment_id, parent_run_id). Raises if the store fails."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(sweep)
    where = (artifact_root / sweep).as_uri() if artifact_root else None
    exp_id = exp.experiment_id if exp else client.create_experiment(sweep, where)
    parent = client.create_run(exp_id, run_name=f"sweep-{sweep}", tags={"sweep": sweep, "kind": "sweep", **tags})
    return exp_id, parent.info.run_id


def tracking_uri(configured: str | None, layout: Layout) -> str:
    """The sweep's tracking store: `tracking.uri`, else MLFLOW_TRACKING_URI, else the output folder's SQLite file."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or layout.mlflow_uri


def open_tracking(uri: str, layout: Layout, sweep: str, config: dict, tags: dict) -> Tracking:
    """The sweep's experiment and a parent run holding the sweep as it runs (sweep.json); a Tracking of
    Nones, with a warning, when the store does not answer. Artifacts go to the output folder beside a local
    store; a server keeps its own (its --artifacts-destination, proxied to every node)."""
    local = uri.startswith(("sqlite:", "file:"))
    try:
        exp_id, parent = open_sweep(uri, sweep, layout.artifacts if local else None, tags)
        mlflow_client(uri).log_text(parent, json.dumps(config, indent=1), "sweep.json")
    except Exception as err:  # noqa: BLE001 -- any failure of the store (HTTP, SQL, MLflow's own) is an outage
        mark_down(uri, "opening the sweep", err)
        return Tracking(uri, None, None)
    return Tracking(uri, exp_id, parent)


def child_run(uri: str, experiment_id: str, parent_id: str, spec) -> str | None:
    """The run's MLflow run, found by its run_id tag or created; None when the store fails."""
    if not available(uri):
        return None
    try:
        return _find_or_create(mlflow_client(uri), experiment_id, parent_id, spec)
    except Exception as err:  # noqa: BLE001 -- see mlflow_store.mark_down
        mark_down(uri, f"opening the run of {spec.name}", err)
        return None


def _find_or_create(client, experiment_id: str, parent_id: str, spec) -> str:
    from mlflow.entities import Param

    found = client.search_runs([experiment_id], filter_string=f"tags.run_id = '{spec.run_id}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {
        "mlflow.parentRunId": parent_id,
        "kind": "run",
        "run_id": spec.run_id,
        "sweep": spec.sweep,
        "arch": spec.arch,
        "size": spec.size,
        "status": st.RUNNING,
    }
    run = client.create_run(experiment_id, run_name=spec.name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in child_params(spec).items()])
    return run.info.run_id


def finish_child(uri: str, experiment_id: str | None, parent_id: str | None, spec, run: RunDir, status: str) -> bool:
    """Bring the run's MLflow run up to its Parquet curve and final status; True once the store has it
    all (then, or already before: the run folder's mlflow.json says what was sent where)."""
    if experiment_id is None or parent_id is None:
        return False
    try:
        curve, events = read_curve(run.curve).to_pylist(), read_events(run.events).to_pylist()
    except CurveDamage:  # never shown as it is: the run is `corrupt`, and trained again
        return False
    last = curve[-1]["timestamp_ms"] if curve else None
    state = {"status": status, "rows": len(curve), "events": len(events), "last_timestamp_ms": last}
    key = f"{uri} experiment {experiment_id}"
    record = run.read_synced()
    if record.get(key, {}).get("state") == state:
        return True
    if not available(uri):
        return False
    try:
        client = mlflow_client(uri)
        mlflow_run_id = _find_or_create(client, experiment_id, parent_id, spec)
        send_metrics(client, mlflow_run_id, curve, events)
        client.set_tag(mlflow_run_id, "status", status)
        client.set_terminated(mlflow_run_id, "FINISHED" if status in st.FINISHED else "FAILED")
    except Exception as err:  # noqa: BLE001 -- see mlflow_store.mark_down
        mark_down(uri, f"finishing the run of {spec.name}", err)
        return False
    record[key] = {"mlflow_run_id": mlflow_run_id, "state": state}
    run.write_synced(record)
    return True


def sync_runs(tracking: Tracking, specs: list, layout: Layout) -> list[str]:
    """Catch MLflow up with every finished run that did not reach it; returns the names still behind."""
    behind = []
    for spec in specs:
        run = layout.run(spec.run_id)
        status = run.status()
        if status and not finish_child(tracking.uri, tracking.experiment_id, tracking.parent_run_id, spec, run, status):
            behind.append(spec.name)
    return behind


def publish(tracking: Tracking, sweep: SweepDir, sweep_file: Path, summary: str) -> None:
    """The report (HTML, Markdown, PDF, figures), fits (file, parameters, metrics), tables and sweep file to
    the parent run, with the summary as its description; raises if the store fails."""
    client = mlflow_client(tracking.uri)
    run = tracking.parent_run_id
    client.log_artifacts(run, str(sweep.report), "report")
    for recorded in (*sweep.recorded, sweep.events, sweep.config):
        client.log_artifact(run, str(recorded))
    client.log_artifact(run, str(sweep_file))
    log_fit(client, run, *fit_scalars(json.loads(sweep.fits.read_text())))
    client.set_tag(run, "mlflow.note.content", summary)  # the run's description in the UI
    client.set_terminated(run, "FINISHED")


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
