"""Kubernetes: each run of the sweep one deployment run of `scaling-point` (flows/scaling_point.py) on a
Kubernetes work pool, whose base job template (deployments/kubernetes/base-job-template.json) makes it a
pod with the run's GPUs, the shared output volume and the tracking server in its environment.

The sweep starts them all (`run_deployment`, linked to it as subflows) and waits for them; Kubernetes
places the pods, and each trains its run by the local rules in the output folder every pod mounts at the
same path. The run folder records its flow run (kubernetes.json), so a sweep invoked again waits on a flow
run still going rather than starting another; a finished run is skipped without a pod. The idempotency key
is the run's id and attempt: Prefect never starts one attempt twice, and a failed attempt is followed by a
new one. Cancelling the sweep cancels its subflow runs (Prefect's own cancellation of a parent's children).
"""

from __future__ import annotations

import dataclasses
import json
import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.logging import get_run_logger

from tasks import status as st
from tasks.atomic import write_atomic
from tasks.config import SweepConfig
from tasks.data import TokenCache
from tasks.layout import Layout, RunDir
from tasks.plan import RunSpec
from tasks.track.mlflow_runs import Tracking
from tasks.train import launch


def train_runs(specs: list[RunSpec], layout: Layout, cache: TokenCache, tracking: Tracking, cfg: SweepConfig) -> None:
    """Start (or find) a flow run for every unfinished run and wait until all have ended."""
    logger = get_run_logger()
    waiting = {}
    for spec in specs:
        run = layout.run(spec.run_id)
        if (done := launch.finished(run)) is not None:
            logger.info("%s: already %s, skipped", spec.name, done)
            continue
        waiting[spec.run_id] = (spec, _flow_run(spec, run, layout, cache, tracking, cfg))
    with get_client(sync_client=True) as client:
        while waiting:
            for run_id, (spec, flow_run_id) in list(waiting.items()):
                state = client.read_flow_run(flow_run_id).state
                if state is not None and state.is_final():
                    status = layout.run(run_id).status() or st.FAILED
                    log = logger.info if status == st.COMPLETED else logger.warning
                    log("%s: flow run %s ended %s, the run %s", spec.name, flow_run_id, state.type.value, status)
                    del waiting[run_id]
            if waiting:
                time.sleep(cfg.cluster.kubernetes.poll_s)


def point_parameters(spec: RunSpec, layout: Layout, cache: TokenCache, tracking: Tracking, cfg: SweepConfig) -> dict:
    """The scaling-point flow's parameters for one run: JSON, as a deployment run's are."""
    return {
        "spec": spec.to_dict(),
        "output": str(layout.output),
        "cache_dir": str(cache.dir),
        "tracking": dataclasses.asdict(tracking),
        "resources": cfg.resources.model_dump(mode="json"),
    }


def job_variables(spec: RunSpec, cfg: SweepConfig) -> dict:
    k = cfg.cluster.kubernetes
    return {**k.job_variables, "gpu_count": spec.ranks * k.gpus_per_rank}


def _flow_run(spec: RunSpec, run: RunDir, layout: Layout, cache: TokenCache, tracking: Tracking, cfg: SweepConfig):
    record = _record(run)
    if record:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(record["flow_run_id"])).state
        if state is not None and not state.is_final():
            return UUID(record["flow_run_id"])  # still going (a sweep invoked again): wait on it
    attempt = record.get("attempt", 0) + 1
    flow_run = run_deployment(
        cfg.cluster.kubernetes.deployment,
        parameters=point_parameters(spec, layout, cache, tracking, cfg),
        job_variables=job_variables(spec, cfg),
        flow_run_name=spec.name,
        idempotency_key=f"{spec.run_id}-{attempt}",
        timeout=0,  # started, not waited on here: train_runs waits on all of them at once
    )
    write_atomic(run.kubernetes_flow_run, json.dumps({"flow_run_id": str(flow_run.id), "attempt": attempt}))
    return flow_run.id


def _record(run: RunDir) -> dict:
    try:
        return json.loads(run.kubernetes_flow_run.read_text())
    except FileNotFoundError:
        return {}
