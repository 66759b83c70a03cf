"""The `scaling-sweep` flow: sweep file -> plan -> tokens -> train every point -> collect -> fit -> report.

Reads a sweep file (deployments/sweeps/*.yaml) and writes under the output folder (see
tasks/layout.py): token caches, one folder per grid point, the sweep's runs.parquet,
curves.parquet, fits.json and report (HTML, Markdown, PDF). MLflow: one experiment per sweep, a
parent run per invocation, a child run per grid point (tasks/track_mlflow.py). Prefect: progress
while the grid trains, then the summary (Markdown) and the runs (table) as artifacts. Deployed as
scaling-sweep/sample and scaling-sweep/pile (deployments/prefect.yaml). Locally:
`scaling run deployments/sweeps/sample.yaml`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import steps
from tasks.config import resolve_sweep_path
from tasks.layout import Layout
from tasks.plan import threads_per_rank
from tasks.train import install_stop_handlers


@flow(name="train-grid")
def train_grid(specs: list, layout, cache, tracking, threads: int, timeout_s: float | None) -> list:
    # Longest first, so that the last slot is not left running one long point alone.
    ordered = sorted(specs, key=lambda s: s.est_wall_s, reverse=True)
    progress = create_progress_artifact(0.0, description=f"0 of {len(specs)} grid points")
    futures = [steps.train_point.submit(s, layout, cache, tracking, threads, timeout_s) for s in ordered]
    counts: dict[str, int] = {}
    for done, future in enumerate(as_completed(futures), start=1):
        result = future.result()
        label = "skipped" if result.skipped else result.status
        counts[label] = counts.get(label, 0) + 1
        so_far = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
        update_progress_artifact(progress, 100.0 * done / len(specs), f"{done} of {len(specs)} grid points: {so_far}")
    return [f.result() for f in futures]


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
) -> str:
    """Run a sweep end to end; returns the path of the HTML report."""
    install_stop_handlers()
    sweep_file = resolve_sweep_path(sweep)
    cfg = steps.load_config(sweep, overrides)
    layout = Layout.at(output)
    plan = steps.plan_grid(cfg)
    cache = steps.prepare_tokens(cfg, layout)
    tracking = steps.open_tracking(cfg, layout, str(sweep_file))

    runner = ThreadPoolTaskRunner(max_workers=cfg.resources.concurrency)
    train_grid.with_options(task_runner=runner)(
        plan.runs, layout, cache, tracking, threads_per_rank(cfg), cfg.resources.timeout_s
    )

    runs_path, _ = steps.collect_tables(plan, layout)
    tracking = steps.sync_tracking(plan, cfg, layout, tracking, str(sweep_file))
    steps.fit_laws(runs_path, cfg)
    report = steps.render_report(runs_path.parent, cfg)
    steps.publish(report, tracking, runs_path.parent, sweep_file)
    print(f"report: {report['html']}")
    return str(report["html"])
