"""The Prefect faces of the stages: each a thin @task over the plain function that does the work.

Kept apart from the stage modules so that the training process, which imports those, does not
pay for importing Prefect.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from tasks import fit, plan
from tasks import status as st
from tasks.cluster import executors, slurm
from tasks.config import ResourcesConfig, SweepConfig, load_sweep, resolve_sweep_path
from tasks.config.cluster import ClusterConfig
from tasks.data import TokenCache, prepare_data
from tasks.layout import Layout, SweepDir
from tasks.report import report_sweeps
from tasks.track import collect, mlflow_runs
from tasks.track.mlflow_runs import Tracking
from tasks.train import devices, launch


def read_sweep(sweep: str, overrides: dict[str, Any] | None, layout: Layout) -> tuple[Path, SweepConfig, plan.Plan]:
    """The sweep file, its validated config and its plan: ConfigError or DataError on bad input, before
    any compute. Plain (not a task), so that bad input fails the flow with its message and no traceback."""
    sweep_file = resolve_sweep_path(sweep)
    cfg = load_sweep(sweep_file, overrides)
    executors.check(cfg)
    p = plan.plan_sweep(cfg)
    states = plan.run_states(p, layout)
    get_run_logger().info(
        "plan:\n%s", plan.format_plan(p, devices.runs_at_once(cfg.resources), cfg.resources.mfu, states)
    )
    return sweep_file, cfg, p


@task(cache_policy=NO_CACHE)
def prepare_tokens(cfg: SweepConfig, layout: Layout) -> TokenCache:
    return prepare_data(cfg.data, layout.data)


@task(cache_policy=NO_CACHE)
def open_tracking(cfg: SweepConfig, layout: Layout, sweep_file: Path) -> Tracking:
    layout.output.mkdir(parents=True, exist_ok=True)
    tags = {"sweep_file": str(sweep_file), "code_version": plan.CODE_VERSION}
    uri = mlflow_runs.tracking_uri(cfg.tracking.uri, layout)
    tracking = mlflow_runs.open_tracking(uri, layout, cfg.name, cfg.model_dump(mode="json"), tags)
    if tracking.parent_run_id is None:
        get_run_logger().warning(
            "MLflow store %s unreachable: training goes on, Parquet records everything, "
            "MLflow is caught up when it answers",
            uri,
        )
    return tracking


class RunFailed(RuntimeError):
    """A training process that crashed, was killed or ran out of time: the task's retries resume it."""


def gpu_limit() -> str:
    """The name of this node's global concurrency limit: one slot per GPU."""
    return f"gpus-{socket.gethostname()}"


def ensure_gpu_limit() -> None:
    """Create this node's GPU limit, as many slots as it has GPUs, unless it exists (its size then is the
    user's: `prefect gcl update`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(gpu_limit())
        except ObjectNotFound:
            try:
                limit = GlobalConcurrencyLimitCreate(name=gpu_limit(), limit=len(devices.visible_gpus()))
                client.create_global_concurrency_limit(limit)
            except ObjectAlreadyExists:  # another flow run on this node made it first
                pass


@contextmanager
def gpus_held(spec: plan.RunSpec, gpus: list[str]) -> Iterator[tuple[str, ...]]:
    """The run's GPUs for as long as it trains (none on a CPU). Prefect counts the node's GPUs in use,
    across flow runs and workers, in its global concurrency limit; tasks.train.devices picks free ones."""
    if not gpus:
        yield ()
        return
    logger = get_run_logger()
    with concurrency(gpu_limit(), occupy=spec.ranks_per_node, strict=True):
        wait = partial(logger.info, "%s: waiting for %d free GPU(s)", spec.name, spec.ranks_per_node)
        with devices.claim(gpus, spec.ranks_per_node, on_wait=wait) as mine:
            logger.info("%s: on GPU(s) %s", spec.name, ",".join(mine))
            yield mine


@task(cache_policy=NO_CACHE, task_run_name="train-{spec.name}")
def train_run(
    spec: plan.RunSpec,
    layout: Layout,
    cache: TokenCache,
    tracking: Tracking,
    threads: int,
    resources: ResourcesConfig,
    cluster: ClusterConfig,
    gpus: list[str],
) -> launch.RunResult:
    logger = get_run_logger()
    run = layout.run(spec.run_id)
    mlflow_run = None
    if tracking.parent_run_id and run.status() not in st.FINISHED:
        mlflow_run = mlflow_runs.child_run(tracking.uri, tracking.experiment_id, tracking.parent_run_id, spec)
    args = (spec, run, cache.dir, threads, tracking.uri, mlflow_run, resources.timeout_s)
    if resources.executor == "slurm":
        result = slurm.train_run(*args, cluster.slurm, resources.retries, on_requeue=_requeued(spec, resources))
    else:  # here, or in the Ray task that holds the run's resources (Ray set its CUDA_VISIBLE_DEVICES)
        if resources.executor == "ray":
            run.note(f"ray task on {socket.gethostname()}, GPUs {os.environ.get('CUDA_VISIBLE_DEVICES', 'none')}")
        with gpus_held(spec, gpus) as mine:
            waiting = partial(logger.info, "%s: waiting for %s, which is training it", spec.name)
            result = launch.train_run(*args, on_wait=waiting, gpus=mine)
    # A run trained while the store was down (or in another sweep) is sent now; one already sent is not.
    mlflow_runs.finish_child(tracking.uri, tracking.experiment_id, tracking.parent_run_id, spec, run, result.status)
    if result.skipped:
        logger.info("%s: already %s, skipped", spec.name, result.status)
        return result
    log = logger.warning if result.status != st.COMPLETED else logger.info
    log("%s: %s in %.0f s %s", spec.name, result.status, result.process_s, result.message)
    if result.status == st.FAILED and not launch.stopping():
        raise RunFailed(f"{spec.name}: {result.message}")  # Prefect retries it (resources.retries)
    return result


def _requeued(spec: plan.RunSpec, resources: ResourcesConfig) -> Callable[[str], None]:
    """A requeue of the run's Slurm job ends this try, so that Prefect records a retry, while retries are left;
    the next try waits on the same job. Past them the task waits on: the job still runs."""

    def on_requeue(why: str) -> None:
        if TaskRunContext.get().task_run.run_count <= resources.retries:
            raise RunFailed(f"{spec.name}: {why}")
        get_run_logger().warning("%s: %s (no retry left to record it; still waiting on it)", spec.name, why)

    return on_requeue


@task(cache_policy=NO_CACHE)
def collect_tables(p: plan.Plan, layout: Layout) -> tuple[SweepDir, dict[str, int]]:
    """The sweep's runs and curves tables; returns its folder and its runs counted by status."""
    sweep = layout.sweep(p.sweep)
    return sweep, collect.collect(p.runs, layout, sweep)


@task(cache_policy=NO_CACHE)
def sync_tracking(p: plan.Plan, cfg: SweepConfig, layout: Layout, tracking: Tracking, sweep_file: Path) -> Tracking:
    """Catch MLflow up with every finished run that did not reach it (the store was slow or down);
    opens the experiment and parent run first if the store was unreachable at the start."""
    if tracking.parent_run_id is None:
        tracking = open_tracking.fn(cfg, layout, sweep_file)
    if tracking.parent_run_id is None:
        return tracking
    if behind := mlflow_runs.sync_runs(tracking, p.runs, layout):
        get_run_logger().warning(
            "%d run(s) not in MLflow yet (%s); the next invocation of the sweep sends them",
            len(behind),
            ", ".join(behind[:5]),
        )
    return tracking


@task(cache_policy=NO_CACHE)
def fit_laws(sweep: SweepDir, cfg: SweepConfig) -> Path:
    fit.fit_file(sweep.runs, sweep.fits, cfg.fit)
    return sweep.fits


@task(cache_policy=NO_CACHE)
def render_report(sweep: SweepDir, cfg: SweepConfig) -> dict:
    import yaml

    from tasks.atomic import write_atomic

    # The sweep as it ran (overrides applied), beside its tables, so a re-rendered report shows it too.
    write_atomic(sweep.config, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    report = report_sweeps([sweep], title=cfg.name)
    if report["pdf_error"]:
        get_run_logger().warning("%s", report["pdf_error"])
    return report


@task(cache_policy=NO_CACHE)
def publish(report: dict, tracking: Tracking, sweep: SweepDir, sweep_file: Path) -> None:
    """The summary and runs table to Prefect; the report, fits, tables and sweep file to the MLflow parent run."""
    key = _artifact_key(sweep.name)
    create_markdown_artifact(
        f"Report: `{report['html']}`\n\n" + report["summary"], key=key, description="Sweep summary"
    )
    create_table_artifact(report["table"], key=key + "-runs", description="Runs")
    if tracking.parent_run_id is None:
        get_run_logger().warning("MLflow unreachable: the report is in %s only", sweep.report)
        return
    try:
        mlflow_runs.publish(tracking, sweep, sweep_file, report["summary"])
    except Exception as err:  # noqa: BLE001 -- any failure of the store (HTTP, SQL, MLflow's own) is an outage
        get_run_logger().warning("MLflow: the report did not reach the parent run (%s); it is in %s", err, sweep.report)


def _artifact_key(name: str) -> str:
    # Prefect artifact keys allow only lowercase letters, numbers and dashes.
    return "sweep-" + "".join(c if c.isalnum() else "-" for c in name.lower())


def stop_training_processes(flow, flow_run, state) -> None:
    """Flow hook for cancellation and crashes: end every training process group this process started, and
    cancel the Slurm jobs it waits on."""
    launch.stop_all()
