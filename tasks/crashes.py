"""The Prefect side of tasks.flow_runs: while a flow run of a sweep lives, its record in the sweep's folder;
earlier flow runs of the sweep whose process is gone without saying so, set Crashed; and a flow run whose
worker is gone, ended."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect import get_client
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

from tasks import flow_runs
from tasks.layout import SweepDir
from tasks.train import launch


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
