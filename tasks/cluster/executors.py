"""How the flow hands its runs to `resources.executor`: the task runner that holds them, the resources each
asks for, and the CPU threads a rank gets where it trains. The training itself is the same everywhere
(tasks.train.launch); Kubernetes, where each run is a deployment run of its own, is tasks.cluster.kubernetes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.config import ConfigError, SweepConfig
from tasks.plan import threads_per_rank
from tasks.train.devices import runs_at_once


def task_runner(cfg: SweepConfig, runs: int, gpus: list[str]) -> TaskRunner:
    """local: as many runs at once as the node holds; slurm: a thread waiting on each job in the queue
    (Slurm decides what runs); ray: the Ray cluster, which places each run where its resources are."""
    if cfg.resources.executor == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=cfg.cluster.ray.address)
    if cfg.resources.executor == "slurm":
        return ThreadPoolTaskRunner(max_workers=min(runs, cfg.cluster.slurm.max_jobs or runs))
    return ThreadPoolTaskRunner(max_workers=runs_at_once(cfg.resources, gpus))


def run_options(cfg: SweepConfig) -> AbstractContextManager:
    """Around each run's submission: on Ray, the GPUs and CPUs its task reserves (Ray then sets the task's
    CUDA_VISIBLE_DEVICES to its GPUs); nothing elsewhere."""
    if cfg.resources.executor != "ray":
        return nullcontext()
    from prefect_ray.context import remote_options

    ranks, ray = cfg.resources.ranks_per_run, cfg.cluster.ray
    return remote_options(num_gpus=ranks * ray.gpus_per_rank, num_cpus=ranks * ray.cpus_per_rank)


def threads(cfg: SweepConfig) -> int:
    """CPU threads per rank on the machine that trains it: this one's share (local), else the cores the
    executor reserves per rank."""
    r, c = cfg.resources, cfg.cluster
    if r.executor == "slurm":
        return c.slurm.cpus_per_rank or r.threads_per_rank or 1
    if r.executor == "ray":
        return r.threads_per_rank or max(1, int(c.ray.cpus_per_rank))
    return threads_per_rank(cfg)


def check(cfg: SweepConfig) -> None:
    """ConfigError, before any compute, where this machine cannot hand runs to the executor."""
    import importlib.util
    import shutil

    executor = cfg.resources.executor
    needs = {"slurm": "submitit", "ray": "prefect_ray", "kubernetes": "prefect_kubernetes"}.get(executor)
    if needs and importlib.util.find_spec(needs) is None:
        raise ConfigError(f"resources.executor: {executor} needs {needs}: pip install -e '.[{executor}]'")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "resources.executor: slurm, but sbatch is not on this machine's PATH: run the sweep (or its Prefect "
            "worker) where Slurm's commands work, such as a login node"
        )
