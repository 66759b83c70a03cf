"""The Prefect faces of the stages: each a thin @task over the plain function that does the work.

Kept apart from the stage modules so that the training process, which imports those, does not
pay for importing Prefect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks import collect, data, fit, plan, train
from tasks import track_mlflow as mlflow_track
from tasks.config import SweepConfig, load_sweep, resolve_sweep_path
from tasks.fit.scalars import fit_scalars
from tasks.layout import SWEEP_CONFIG, Layout


@dataclass(frozen=True)
class Tracking:
    """The sweep's MLflow experiment and this invocation's parent run; both None while the store is
    unreachable (the sweep goes on with Parquet alone, and `sync_tracking` catches MLflow up)."""

    uri: str
    experiment_id: str | None
    parent_run_id: str | None


@task(cache_policy=NO_CACHE)
def load_config(sweep: str, overrides: dict[str, Any] | None) -> SweepConfig:
    return load_sweep(resolve_sweep_path(sweep), overrides)


@task(cache_policy=NO_CACHE)
def plan_grid(cfg: SweepConfig) -> plan.Plan:
    p = plan.plan_sweep(cfg)
    get_run_logger().info("plan:\n%s", plan.format_plan(p, cfg.resources.concurrency))
    return p


@task(cache_policy=NO_CACHE)
def prepare_tokens(cfg: SweepConfig, layout: Layout) -> data.TokenCache:
    return data.prepare_data(cfg.data, layout.data)


@task(cache_policy=NO_CACHE)
def open_tracking(cfg: SweepConfig, layout: Layout, sweep_file: str) -> Tracking:
    layout.output.mkdir(parents=True, exist_ok=True)
    return _open_tracking(cfg, layout, sweep_file)


def _open_tracking(cfg: SweepConfig, layout: Layout, sweep_file: str) -> Tracking:
    tags = {"sweep_file": str(sweep_file), "code_version": plan.CODE_VERSION}
    try:
        exp_id, parent = mlflow_track.open_sweep(layout.mlflow_uri, cfg.name, layout.artifacts, tags)
        client = mlflow_track.mlflow_client(layout.mlflow_uri)
        client.log_text(parent, json.dumps(cfg.model_dump(mode="json"), indent=1), "sweep.json")
    except Exception as err:  # noqa: BLE001 -- any failure of the store (HTTP, SQL, MLflow's own) is an outage
        get_run_logger().warning(
            "MLflow store %s unreachable (%s): training goes on, Parquet records everything, "
            "MLflow is caught up when it answers",
            layout.mlflow_uri,
            err,
        )
        return Tracking(layout.mlflow_uri, None, None)
    return Tracking(layout.mlflow_uri, exp_id, parent)


@task(cache_policy=NO_CACHE, task_run_name="train-{spec.name}")
def train_point(
    spec: plan.RunSpec,
    layout: Layout,
    cache: data.TokenCache,
    tracking: Tracking,
    threads: int,
    timeout_s: float | None,
) -> train.RunResult:
    logger = get_run_logger()
    run_dir = layout.run(spec.run_id)
    finished = train.read_status(run_dir).get("status") in train.FINISHED
    mlflow_run = None
    if tracking.parent_run_id and not finished:
        mlflow_run = mlflow_track.child_run(tracking.uri, tracking.experiment_id, tracking.parent_run_id, spec)
    result = train.run_point(spec, run_dir, cache.dir, threads, tracking.uri, mlflow_run, timeout_s)
    # A point trained while the store was down (or in another sweep) is sent now; one already sent is not.
    mlflow_track.finish_child(
        tracking.uri, tracking.experiment_id, tracking.parent_run_id, spec, run_dir, result.status
    )
    if result.skipped:
        logger.info("%s: already %s, skipped", spec.name, result.status)
        return result
    log = logger.warning if result.status != "completed" else logger.info
    log("%s: %s in %.0f s %s", spec.name, result.status, result.process_s, result.message)
    return result


@task(cache_policy=NO_CACHE)
def collect_tables(p: plan.Plan, layout: Layout) -> tuple[Path, Path]:
    return collect.collect(p.runs, layout.runs, layout.sweep(p.sweep))


@task(cache_policy=NO_CACHE)
def fit_laws(runs_path: Path, cfg: SweepConfig) -> Path:
    out = runs_path.parent / "fits.json"
    fit.fit_file(runs_path, out, cfg.fit)
    return out


@task(cache_policy=NO_CACHE)
def sync_tracking(p: plan.Plan, cfg: SweepConfig, layout: Layout, tracking: Tracking, sweep_file: str) -> Tracking:
    """Catch MLflow up with every finished point that did not reach it (the store was slow or down);
    opens the experiment and parent run first if the store was unreachable at the start."""
    if tracking.parent_run_id is None:
        tracking = _open_tracking(cfg, layout, sweep_file)
    if tracking.parent_run_id is None:
        return tracking
    behind = []
    for spec in p.runs:
        status = train.read_status(layout.run(spec.run_id)).get("status")
        if status and not mlflow_track.finish_child(
            tracking.uri, tracking.experiment_id, tracking.parent_run_id, spec, layout.run(spec.run_id), status
        ):
            behind.append(spec.name)
    if behind:
        get_run_logger().warning(
            "%d point(s) not in MLflow yet (%s); the next run of the sweep sends them",
            len(behind),
            ", ".join(behind[:5]),
        )
    return tracking


@task(cache_policy=NO_CACHE)
def render_report(sweep_dir: Path, cfg: SweepConfig) -> dict:
    import yaml

    from tasks.report import report_sweeps

    # The sweep as it ran (overrides applied), beside its tables, so a re-rendered report shows it too.
    (sweep_dir / SWEEP_CONFIG).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    report = report_sweeps([sweep_dir], title=cfg.name)
    if report["pdf_error"]:
        get_run_logger().warning("%s", report["pdf_error"])
    return report


@task(cache_policy=NO_CACHE)
def publish(report: dict, tracking: Tracking, sweep_dir: Path, sweep_file: Path) -> None:
    """The summary and runs table to Prefect; the report (HTML, Markdown, PDF, figures), fits (file,
    parameters, metrics), tables and sweep file to the MLflow parent run, with the summary as its
    description."""
    name = _artifact_key(sweep_dir.name)
    create_markdown_artifact(
        f"Report: `{report['html']}`\n\n" + report["summary"], key=name, description="Sweep summary"
    )
    create_table_artifact(report["table"], key=name + "-runs", description="Runs")
    if tracking.parent_run_id is None:
        get_run_logger().warning("MLflow unreachable: the report is in %s only", sweep_dir / "report")
        return
    try:
        client = mlflow_track.mlflow_client(tracking.uri)
        run = tracking.parent_run_id
        client.log_artifacts(run, str(sweep_dir / "report"), "report")
        for recorded in ("fits.json", "runs.parquet", "curves.parquet", SWEEP_CONFIG):
            client.log_artifact(run, str(sweep_dir / recorded))
        client.log_artifact(run, str(sweep_file))
        mlflow_track.log_fit(client, run, *fit_scalars(json.loads((sweep_dir / "fits.json").read_text())))
        client.set_tag(run, "mlflow.note.content", report["summary"])  # the run's description in the UI
        client.set_terminated(run, "FINISHED")
    except Exception as err:  # noqa: BLE001 -- as in _open_tracking
        get_run_logger().warning(
            "MLflow: the report did not reach the parent run (%s); it is in %s", err, sweep_dir / "report"
        )


def _artifact_key(name: str) -> str:
    # Prefect artifact keys allow only lowercase letters, numbers and dashes.
    return "sweep-" + "".join(c if c.isalnum() else "-" for c in name.lower())


def stop_training_processes(flow, flow_run, state) -> None:
    """Flow hook for cancellation and crashes: end every training process group this process started."""
    train.stop_all()
