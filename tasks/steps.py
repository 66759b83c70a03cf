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

from tasks import collect, data, fit, plan, track, train
from tasks.config import SweepConfig, load_sweep, resolve_sweep_path
from tasks.fit.scalars import fit_scalars
from tasks.layout import Layout


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment_id: str
    parent_run_id: str


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
    tags = {"sweep_file": str(sweep_file), "code_version": plan.CODE_VERSION}
    exp_id, parent = track.open_sweep(layout.mlflow_uri, cfg.name, layout.artifacts, tags)
    track.mlflow_client(layout.mlflow_uri).log_text(parent, json.dumps(cfg.model_dump(mode="json"), indent=1),
                                                    "sweep.json")  # fmt: skip
    return Tracking(layout.mlflow_uri, exp_id, parent)


@task(cache_policy=NO_CACHE, task_run_name="train-{spec.name}")
def train_point(spec: plan.RunSpec, layout: Layout, cache: data.TokenCache, tracking: Tracking,
                threads: int, timeout_s: float | None) -> train.RunResult:  # fmt: skip
    logger = get_run_logger()
    run_dir = layout.run(spec.run_id)
    mlflow_run = track.child_run(tracking.uri, tracking.experiment_id, tracking.parent_run_id, spec)
    result = train.run_point(spec, run_dir, cache.dir, threads, tracking.uri, mlflow_run, timeout_s)
    if result.skipped:
        logger.info("%s: already %s, skipped", spec.name, result.status)
        return result
    track.finish_child(tracking.uri, mlflow_run, run_dir / "curve", result.status)
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
def render_report(sweep_dir: Path, title: str) -> dict:
    from tasks.report import report_sweep

    return report_sweep(sweep_dir, title)


@task(cache_policy=NO_CACHE)
def publish(report: dict, tracking: Tracking, sweep_dir: Path, sweep_file: Path) -> None:
    """The report, figures, fits (file, parameters, metrics), tables and sweep file to the MLflow parent run;
    the summary to Prefect."""
    client = track.mlflow_client(tracking.uri)
    run = tracking.parent_run_id
    client.log_artifacts(run, str(sweep_dir / "report"), "report")
    for name in ("fits.json", "runs.parquet", "curves.parquet"):
        client.log_artifact(run, str(sweep_dir / name))
    client.log_artifact(run, str(sweep_file))
    track.log_fit(client, run, *fit_scalars(json.loads((sweep_dir / "fits.json").read_text())))
    client.set_terminated(run, "FINISHED")
    create_markdown_artifact(report["summary"], key=_artifact_key(sweep_dir.name), description="Sweep summary")
    create_table_artifact(report["table"], key=_artifact_key(sweep_dir.name) + "-runs", description="Runs")


def _artifact_key(name: str) -> str:
    # Prefect artifact keys allow only lowercase letters, numbers and dashes.
    return "sweep-" + "".join(c if c.isalnum() else "-" for c in name.lower())


def stop_training_processes(flow, flow_run, state) -> None:
    """Flow hook for cancellation and crashes: end every training process group this process started."""
    train.stop_all()
