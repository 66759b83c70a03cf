"""Where a sweep's runs train when `resources.executor` is not `local`: the site's settings for each engine.

The `cluster` section of a sweep, inline or as the path of a profile file (deployments/clusters/*.yaml)
that `load_sweep` reads in its place, so a site writes its partition and account once for all its sweeps.
Only the section of the chosen executor is read; the others keep their defaults.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from tasks.config.base import PositiveFloat, PositiveInt, Strict

EXECUTORS = ("local", "slurm", "ray", "kubernetes")
Executor = Literal["local", "slurm", "ray", "kubernetes"]


class SlurmConfig(Strict):
    """One Slurm job per run, submitted with submitit (tasks.cluster.slurm)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: PositiveInt | None = None
    """Walltime of a run's job in minutes (default: twice the run's estimate plus 10). A run that outlives
    it is requeued and resumes from its last checkpoint."""
    signal_s: PositiveInt = 120
    """Seconds before the walltime at which the job is told to stop and requeue itself."""
    gpus_per_rank: Annotated[int, Field(ge=0)] = 1
    """GPUs asked per rank (0 on a CPU partition)."""
    gpu_flag: Literal["gpus-per-node", "gres"] = "gpus-per-node"
    """How the site asks for GPUs: --gpus-per-node=N, or --gres=gpu:N where the first is rejected."""
    cpus_per_rank: PositiveInt | None = None
    """CPU cores asked per rank (default: resources.threads_per_rank, else 1)."""
    mem_gb: PositiveFloat | None = None
    setup: list[str] = []
    """Shell lines the job runs before training (module loads, activating the environment)."""
    python: str | None = None
    """The interpreter on the compute nodes (default: the one running the sweep)."""
    sbatch: dict[str, str | int] = {}
    """Further sbatch options by name, e.g. {constraint: h100, exclusive: user}."""
    max_jobs: PositiveInt | None = None
    """Jobs the sweep keeps submitted at once (default: one per run; Slurm queues them)."""
    poll_s: PositiveFloat = 15.0
    """How often each run's task asks Slurm about its job."""


class RayConfig(Strict):
    """Each run a Ray task (prefect-ray's RayTaskRunner) that starts torchrun on its node (tasks.cluster.ray)."""

    address: str | None = None
    """The cluster: 'auto', host:6379 or ray://host:10001 (default: RAY_ADDRESS, else a new local instance)."""
    gpus_per_rank: Annotated[float, Field(ge=0)] = 1.0
    """Ray GPUs reserved per rank (0 on CPU nodes); Ray sets the task's CUDA_VISIBLE_DEVICES to them."""
    cpus_per_rank: PositiveFloat = 1.0


class KubernetesConfig(Strict):
    """Each run a deployment run of `scaling-point` on a Kubernetes work pool (tasks.cluster.kubernetes)."""

    deployment: str = "scaling-point/kubernetes"
    """The deployment each run is started from (deployments/prefect.yaml)."""
    job_variables: dict[str, Any] = {}
    """Work-pool template variables for every run (image, node_selector, tolerations, output_pvc, ...,
    deployments/kubernetes/base-job-template.json); gpu_count is the run's own."""
    gpus_per_rank: Annotated[int, Field(ge=0)] = 1
    """GPUs a run's pod asks for per rank (gpu_count = ranks_per_run x this)."""
    poll_s: PositiveFloat = 10.0
    """How often the sweep asks Prefect about its runs' flow runs."""


class ClusterConfig(Strict):
    slurm: SlurmConfig = SlurmConfig()
    ray: RayConfig = RayConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
