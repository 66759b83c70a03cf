"""The Prefect faces of the stages: each a thin @task over the plain function that does the work.

Kept apart from the stage modules so that the training process, which imports those, does not
pay for importing Prefect.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_client, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.logging.handlers import APILogWorker
from prefect.settings import get_current_settings
from prefect.states import Crashed

from tasks import fit, flow_runs, plan
from tasks import status as st
from tasks.config import SweepConfig, load_sweep, resolve_sweep_path
from tasks.data import TokenCache, prepare_data
from tasks.layout import Layout, SweepDir
from tasks.report import report_sweeps
from tasks.track import collect, mlflow_runs
from tasks.track.mlflow_runs import Tracking
from tasks.train import launch


def read_sweep(sweep: str, overrides: dict[str, Any] | None, layout: Layout) -> tuple[Path, SweepConfig, plan.Plan]:
    """The sweep file, its validated config and its plan: ConfigError or DataError on bad input, before
    any compute. Plain (not a task), so that bad input fails the flow with its message and no traceback."""
    sweep_file = resolve_sweep_path(sweep)
    cfg = load_sweep(sweep_file, overrides)
    p = plan.plan_sweep(cfg)
    states = {r.run_id: layout.run(r.run_id).state() for r in p.runs}
    get_run_logger().info("plan:\n%s", plan.format_plan(p, cfg.resources.concurrency, states))
    return sweep_file, cfg, p


@contextmanager
def flow_run_recorded(sweep: SweepDir) -> Iterator[None]:
    """Around the sweep's work in its flow run. First the earlier flow runs of this sweep whose process is gone
    without saying so (SIGKILLed, out of memory) are set Crashed, where Prefect still shows them Running; then
    this one is recorded in the sweep's folder until it ends. A flow run that a worker (or `serve`) started
    watches that worker too: when the worker is gone, the flow run sets itself Crashed, stops its training
    processes and exits, rather than train on where no one can cancel it or read its output. One run in-process
    (`scaling run`) gets a watchdog process instead, which ends its children if it is killed."""
    flow_run_id = str(FlowRunContext.get().flow_run.id)
    api = _api_name()
    try:
        crash_gone_flow_runs(sweep, api)
    except Exception as err:  # noqa: BLE001 -- a state left Running is no reason to stop this sweep
        get_run_logger().warning("earlier flow runs of this sweep not checked: %s", err)
    started_by_worker = os.environ.get("PREFECT__FLOW_RUN_ID") == flow_run_id  # set by workers and `serve`
    record = flow_runs.FlowRunRecord.of_this_process(flow_run_id, api, os.getppid() if started_by_worker else None)
    sweep.write_flow_run(record.to_dict())
    if record.worker_pid is not None:
        logger = get_run_logger()
        flow_runs.watch_parent(record.worker_pid, lambda: _worker_gone(record, sweep, logger))
    else:  # `scaling run`: a SIGKILL would leave its temporary Prefect server running for good
        flow_runs.start_child_reaper()
    try:
        yield
    finally:
        sweep.drop_flow_run(flow_run_id)


_UNFINISHED = [StateType.RUNNING, StateType.PENDING]


def crash_gone_flow_runs(sweep: SweepDir, api: str) -> list[str]:
    """Set Crashed each recorded flow run of the sweep that Prefect shows unfinished but whose process is gone
    (a dead pid, or one reused by another process); returns their ids. A process on another host cannot be
    looked at: its flow run is left as it is, with a warning."""
    records = [flow_runs.FlowRunRecord.from_dict(r) for r in sweep.read_flow_runs()]
    if not records:
        return []
    logger = get_run_logger()
    crashed = []
    with get_client(sync_client=True) as client:
        for rec in records:
            try:
                run = client.read_flow_run(UUID(rec.flow_run_id))
            except ObjectNotFound:
                if rec.api == api:  # this Prefect database was reset
                    sweep.drop_flow_run(rec.flow_run_id)
                else:
                    logger.info(
                        "flow run %s of %s is in another Prefect API (%s): left as it is",
                        rec.flow_run_id,
                        rec.where(),
                        rec.api,
                    )
                continue
            if run.state is None or run.state.type not in _UNFINISHED:
                sweep.drop_flow_run(rec.flow_run_id)  # Prefect knows it ended (its worker reported it crashed)
                continue
            gone = flow_runs.is_gone(rec)
            if gone is None:
                logger.warning(
                    "flow run %s '%s' is %s, started by %s: whether that process is alive cannot be told from "
                    "this host, so its state is left as it is",
                    rec.flow_run_id,
                    run.name,
                    run.state.name,
                    rec.where(),
                )
            elif gone:
                message = f"{rec.where()} is gone"
                _crash(client, run.id, message)
                sweep.drop_flow_run(rec.flow_run_id)
                logger.warning(
                    "flow run %s '%s' was %s, but %s: set it Crashed; this invocation trains what it left",
                    rec.flow_run_id,
                    run.name,
                    run.state.name,
                    message,
                )
                crashed.append(rec.flow_run_id)
    return crashed


def _crash(client, flow_run_id: UUID, message: str) -> None:
    """The flow run, its unfinished subflow runs (train-grid) and their unfinished task runs, to Crashed."""
    subflows = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_UNFINISHED)),
        )
    )
    ids = [flow_run_id, *(f.id for f in subflows)]
    tasks = client.read_task_runs(
        task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=ids),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=_UNFINISHED)),
        )
    )
    for t in tasks:
        client.set_task_run_state(t.id, Crashed(message=message))
    for i in reversed(ids):
        client.set_flow_run_state(i, Crashed(message=message))


def _worker_gone(record: flow_runs.FlowRunRecord, sweep: SweepDir, logger) -> None:
    """On the watch thread, once the worker that started this flow run is gone: Crashed, training stopped, exit."""
    message = (
        f"worker process {record.worker_pid} on host {record.host} is gone: {record.where()} stopped its "
        "training processes and exited; run the sweep again to resume them"
    )
    try:
        with get_client(sync_client=True) as client:
            _crash(client, UUID(record.flow_run_id), message)
        sweep.drop_flow_run(record.flow_run_id)
    except Exception:  # noqa: BLE001 -- the API unreachable: the record stays, and the next invocation crashes it
        pass
    try:
        launch.stop_all()
        logger.warning("%s", message)  # its console half may fail: it writes to the dead worker's pipe
        APILogWorker.drain_all(timeout=5)
    except BaseException:  # noqa: BLE001 -- the dead pipe raises SystemExit (rich); the process ends either way
        pass
    finally:
        os._exit(1)


def _api_name() -> str:
    settings = get_current_settings()
    return str(settings.api.url or f"the temporary server of PREFECT_HOME={settings.home}")


@task(cache_policy=NO_CACHE)
def prepare_tokens(cfg: SweepConfig, layout: Layout) -> TokenCache:
    return prepare_data(cfg.data, layout.data)


@task(cache_policy=NO_CACHE)
def open_tracking(cfg: SweepConfig, layout: Layout, sweep_file: Path) -> Tracking:
    layout.output.mkdir(parents=True, exist_ok=True)
    tags = {"sweep_file": str(sweep_file), "code_version": plan.CODE_VERSION}
    tracking = mlflow_runs.open_tracking(layout, cfg.name, cfg.model_dump(mode="json"), tags)
    if tracking.parent_run_id is None:
        get_run_logger().warning(
            "MLflow store %s unreachable: training goes on, Parquet records everything, "
            "MLflow is caught up when it answers",
            layout.mlflow_uri,
        )
    return tracking


class RunFailed(RuntimeError):
    """A training process that crashed, was killed or ran out of time: the task's retries resume it."""


@task(cache_policy=NO_CACHE, task_run_name="train-{spec.name}")
def train_run(
    spec: plan.RunSpec, layout: Layout, cache: TokenCache, tracking: Tracking, threads: int, timeout_s: float | None
) -> launch.RunResult:
    logger = get_run_logger()
    run = layout.run(spec.run_id)
    mlflow_run = None
    if tracking.parent_run_id and run.status() not in st.FINISHED:
        mlflow_run = mlflow_runs.child_run(tracking.uri, tracking.experiment_id, tracking.parent_run_id, spec)
    result = launch.train_run(
        spec,
        run,
        cache.dir,
        threads,
        tracking.uri,
        mlflow_run,
        timeout_s,
        on_wait=lambda holder: logger.info("%s: waiting for %s, which is training it", spec.name, holder),
    )
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
    """Flow hook for cancellation and crashes: end every training process group this process started."""
    launch.stop_all()
