"""The `scaling-sweep` flow: sweep file -> plan -> tokens -> train every run -> collect -> fit -> report.

Reads a sweep file (deployments/sweeps/*.yaml) and writes under the output folder (tasks/layout.py):
token caches, one folder per run, the sweep's runs.parquet, curves.parquet, fits.json and report (HTML,
Markdown, PDF). MLflow: one experiment per sweep, a parent run per invocation, a child run per run of the
grid (tasks/track/mlflow_runs.py). Prefect: progress while the grid trains, then the summary (Markdown)
and the runs (table) as artifacts. Deployed as scaling-sweep/sample, /pile and /hg38
(deployments/prefect.yaml). Locally: `scaling run deployments/sweeps/sample.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.states import Failed

from tasks import crashes, steps
from tasks.cluster import executors, kubernetes
from tasks.config import ConfigError, SweepConfig
from tasks.data import DataError
from tasks.layout import Layout
from tasks.status import FAILED
from tasks.train.devices import node_gpus
from tasks.train.launch import install_stop_handlers


@dataclass(frozen=True)
class SweepOutcome:
    """What a finished sweep left, for the caller to print or act on."""

    sweep_dir: Path
    report: dict[str, Path | None]
    """html, md and pdf (None when no PDF could be printed)."""
    counts: dict[str, int]
    """Runs by status (tasks.status)."""


@flow(name="train-grid")
def train_grid(specs: list, layout, cache, tracking, cfg: SweepConfig, gpus: list) -> None:
    # Longest first, so that the last slot is not left running one long run alone.
    install_stop_handlers()  # Prefect's handler for this subflow would wait for the runs to end
    ordered = sorted(specs, key=lambda s: s.est_wall_s, reverse=True)
    progress = create_progress_artifact(0.0, description=f"0 of {len(specs)} runs")
    if gpus:
        steps.ensure_gpu_limit()
    r, threads = cfg.resources, executors.threads(cfg)
    train = steps.train_run.with_options(retries=r.retries, retry_delay_seconds=r.retry_delay_s)
    with executors.run_options(cfg):
        futures = [train.submit(s, layout, cache, tracking, threads, r, cfg.cluster, gpus) for s in ordered]
    counts: dict[str, int] = {}
    for done, future in enumerate(as_completed(futures), start=1):
        result = future.result(raise_on_failure=False)  # a run failed past its retries: collect reports it
        label = FAILED if isinstance(result, BaseException) else "skipped" if result.skipped else result.status
        counts[label] = counts.get(label, 0) + 1
        so_far = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
        update_progress_artifact(progress, 100.0 * done / len(specs), f"{done} of {len(specs)} runs: {so_far}")


@flow(
    name="scaling-sweep",
    log_prints=True,
    on_cancellation=[steps.stop_training_processes],
    on_crashed=[steps.stop_training_processes],
)
def scaling_sweep(
    sweep: str = "deployments/sweeps/sample.yaml",
    output: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> SweepOutcome:
    """Run a sweep end to end; returns where its results are and how its runs ended."""
    install_stop_handlers()
    layout = Layout.at(output)
    try:
        sweep_file, cfg, plan = steps.read_sweep(sweep, overrides, layout)
    except (ConfigError, DataError) as err:  # bad input: the run fails with its message, nothing computed
        return Failed(message=str(err), data=err)
    # Earlier flow runs of this sweep whose process was killed are set Crashed first; this one is recorded
    # in the sweep's folder while it lives (and, started by a worker, ends with its worker).
    with crashes.flow_run_recorded(layout.sweep(plan.sweep)):
        cache = steps.prepare_tokens(cfg, layout)
        tracking = steps.open_tracking(cfg, layout, sweep_file)

        if cfg.resources.executor == "kubernetes":  # a deployment run, a pod, for each run
            kubernetes.train_runs(plan.runs, layout, cache, tracking, cfg)
        else:
            # This node's GPUs, for its runs (none on a CPU); elsewhere the executor's engine places them.
            gpus = node_gpus(cfg.resources.gpus) if cfg.resources.executor == "local" else []
            runner = executors.task_runner(cfg, len(plan.runs), gpus)
            train_grid.with_options(task_runner=runner)(plan.runs, layout, cache, tracking, cfg, gpus)

        sweep_dir, counts = steps.collect_tables(plan, layout)
        tracking = steps.sync_tracking(plan, cfg, layout, tracking, sweep_file)
        steps.fit_laws(sweep_dir, cfg)
        report = steps.render_report(sweep_dir, cfg)
        steps.publish(report, tracking, sweep_dir, sweep_file)
    print(f"report: {report['html']}")
    return SweepOutcome(sweep_dir.path, {k: report[k] for k in ("html", "md", "pdf")}, counts)
