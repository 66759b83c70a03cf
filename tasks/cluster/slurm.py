"""Slurm: each run of the sweep one job, submitted with submitit by the run's Prefect task, which waits on it.

The job (tasks.cluster.slurm_job) trains the run by the local rules, in the run folder every node sees.
Its id is kept in the run folder (slurm.json), so a retried task, or the sweep invoked again after its
flow process died, waits on the job already in the queue rather than submitting a second one. A job that
Slurm requeues (its walltime signal, a preemption) is a retry to Prefect: the waiting task raises, and
its next try waits on the same job, which resumes from the run's last checkpoint. A job that ends badly
(a crash, a node failure, cancelled by hand) fails the try too, and the next try submits a new job.
Cancelling the sweep cancels every job its tasks wait on (scancel).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tasks import status as st
from tasks.atomic import write_atomic
from tasks.config.cluster import SlurmConfig
from tasks.layout import RunDir
from tasks.plan import RunSpec
from tasks.train import launch

ENDED = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
ENDED |= {"PREEMPTED"}  # and not requeued; a requeued job is PENDING again, and a retry waits on it
GONE = "GONE"
"""A job Slurm no longer lists: ended longer ago than its MinJobAge."""

_waiting: set[str] = set()  # jobs this process's tasks wait on, for cancel_all
_waiting_lock = threading.Lock()


def sbatch_parameters(spec: RunSpec, cfg: SlurmConfig, threads: int) -> dict:
    """submitit's SlurmExecutor parameters for one run's job: its nodes, GPUs, cores, walltime and site."""
    per_node = spec.ranks_per_node
    params = {
        "job_name": spec.name,
        "nodes": spec.nodes,
        "ntasks_per_node": 1,  # the job's one process per node starts that node's ranks (torchrun)
        "cpus_per_task": per_node * threads,
        "time": cfg.time_min or walltime_min(spec),
        "use_srun": False,  # the batch step runs Point itself, once, and starts srun for several nodes
        "signal_delay_s": cfg.signal_s,
        "stderr_to_stdout": True,
        "setup": list(cfg.setup),
        # B: sends the signal to the batch step, where Point runs (without use_srun there is no other step).
        "additional_parameters": {"signal": f"B:USR2@{cfg.signal_s}", **cfg.sbatch},
    }
    if cfg.gpus_per_rank:
        gpus = per_node * cfg.gpus_per_rank
        params.update({"gres": f"gpu:{gpus}"} if cfg.gpu_flag == "gres" else {"gpus_per_node": gpus})
    params.update({k: v for k, v in (("partition", cfg.partition), ("account", cfg.account), ("qos", cfg.qos)) if v})
    if cfg.mem_gb:
        params["mem"] = f"{math.ceil(cfg.mem_gb * 1024)}M"
    return params


def walltime_min(spec: RunSpec) -> int:
    """Twice the run's estimate plus 10 minutes: an estimate off by half still fits in one job."""
    return math.ceil(2 * spec.est_wall_s / 60) + 10


def job_info(job_id: str) -> dict[str, str]:
    """What `scontrol show job` says of the job (JobState, Restarts, ...); JobState GONE once it is not
    listed, UNKNOWN while Slurm's controller does not answer (the next poll asks again)."""
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return {"JobState": "UNKNOWN"}
    if proc.returncode != 0:
        return {"JobState": GONE if "Invalid job id" in proc.stderr else "UNKNOWN"}
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout.splitlines()[0]))


def cancel_all() -> None:
    """scancel every job this process's tasks wait on (a cancelled or stopped sweep)."""
    with _waiting_lock:
        jobs = sorted(_waiting)
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=60, check=False)


def train_run(
    spec: RunSpec,
    run: RunDir,
    cache_dir: Path,
    threads: int,
    mlflow_uri: str | None,
    mlflow_run_id: str | None,
    timeout_s: float | None,
    cfg: SlurmConfig,
    retries: int,
    on_requeue: Callable[[str], None],
) -> launch.RunResult:
    """Train the run as a Slurm job (the one already queued for it, else a new one) and wait for it to end.
    `on_requeue` hears of each requeue Slurm makes; raising there ends this try (a Prefect retry)."""
    if (done := launch.finished(run)) is not None:
        return launch.RunResult(spec.run_id, done, skipped=True, process_s=0.0)
    launch.also_stop(cancel_all)
    t0 = time.time()
    record = _record(run)
    if not record or job_info(record["job_id"])["JobState"] in ENDED | {GONE}:
        point = _point(spec, run, cache_dir, threads, mlflow_uri, mlflow_run_id, timeout_s)
        record = {"job_id": _submit(point, spec, run, cfg, threads, retries), "restarts_seen": 0}
        write_atomic(run.slurm_job, json.dumps(record))
    job_id = record["job_id"]
    with _waiting_lock:
        _waiting.add(job_id)
    state = _wait(job_id, run, record["restarts_seen"], cfg.poll_s, on_requeue)
    with _waiting_lock:  # only once it ended: a cancel during a retry's delay still finds the job
        _waiting.discard(job_id)
    status = run.status() or st.FAILED
    message = run.read_timing().get("message", "") if status == st.FAILED else ""
    if status == st.FAILED or state != "COMPLETED":
        message = f"Slurm job {job_id} ended {state}; {message or f'see {run.slurm_logs}/{job_id}_0_log.out'}"
    return launch.RunResult(spec.run_id, status, skipped=False, process_s=time.time() - t0, message=message)


def _point(spec, run, cache_dir, threads, mlflow_uri, mlflow_run_id, timeout_s):
    from tasks.cluster.slurm_job import Point  # imports submitit, which only this executor needs

    return Point(spec.to_dict(), str(run.path), str(cache_dir), threads, mlflow_uri, mlflow_run_id, timeout_s)


def _submit(point, spec: RunSpec, run: RunDir, cfg: SlurmConfig, threads: int, retries: int) -> str:
    import submitit

    # max_num_timeout: Slurm requeues a job at its walltime as often as the run may be retried.
    # exec: the batch shell becomes Python, so the walltime signal (sent to the batch shell, B:) reaches
    # submitit's handler rather than ending a shell that would leave its child running.
    python = f"exec {shlex.quote(cfg.python or sys.executable)}"
    executor = submitit.SlurmExecutor(folder=run.slurm_logs, python=python, max_num_timeout=retries)
    executor.update_parameters(**sbatch_parameters(spec, cfg, threads))
    return executor.submit(point).job_id


def _record(run: RunDir) -> dict:
    try:
        return json.loads(run.slurm_job.read_text())
    except FileNotFoundError:
        return {}


def _wait(job_id: str, run: RunDir, seen: int, poll_s: float, on_requeue: Callable[[str], None]) -> str:
    """Poll the job until it ends; returns its last state."""
    while True:
        info = job_info(job_id)
        restarts = int(info.get("Restarts", seen))
        if restarts > seen:
            seen = restarts
            write_atomic(run.slurm_job, json.dumps({"job_id": job_id, "restarts_seen": seen}))
            on_requeue(f"Slurm job {job_id} was requeued ({restarts} time(s)); it resumes from its last checkpoint")
        if info["JobState"] in ENDED | {GONE}:
            return info["JobState"]
        time.sleep(poll_s)
