"""The `scaling-point` flow: one run of a sweep, trained where its deployment's work pool puts it.

Started by the scaling-sweep flow with `resources.executor: kubernetes`, one deployment run per run
(tasks.cluster.kubernetes), each a pod of the work pool's template. It trains the run as the sweep's own
task does (tasks.steps.train_run: the run folder's lock, skip when finished, resume, retries, MLflow), in
the output folder the pod mounts where the sweep's flow run has it. Deployed as scaling-point/kubernetes
(deployments/prefect.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow

from tasks import steps
from tasks.config import ResourcesConfig
from tasks.config.cluster import ClusterConfig
from tasks.data import TokenCache
from tasks.layout import Layout
from tasks.plan import RunSpec
from tasks.track.mlflow_runs import Tracking
from tasks.train.devices import node_gpus
from tasks.train.launch import install_stop_handlers


@flow(
    name="scaling-point",
    log_prints=True,
    on_cancellation=[steps.stop_training_processes],
    on_crashed=[steps.stop_training_processes],
)
def scaling_point(spec: dict, output: str, cache_dir: str, tracking: dict, resources: dict) -> str:
    """Train one run; returns its status word (tasks.status)."""
    install_stop_handlers()
    run = RunSpec.from_dict(spec)
    # This pod is the run's machine: its GPUs, its cores.
    here = ResourcesConfig.model_validate({**resources, "executor": "local", "gpus": None})
    threads = here.threads_per_rank or max(1, (os.cpu_count() or 1) // here.ranks_per_run)
    train = steps.train_run.with_options(retries=here.retries, retry_delay_seconds=here.retry_delay_s)
    cache, gpus = TokenCache.open(Path(cache_dir)), node_gpus(None)
    if gpus:
        steps.ensure_gpu_limit()
    result = train(run, Layout.at(output), cache, Tracking(**tracking), threads, here, ClusterConfig(), gpus)
    return result.status
