"""What a run's Slurm job runs on its first node: `Point`, pickled by submitit on submission.

It trains the run as a local launcher does (tasks.train.launch: the run folder's lock, skip when finished,
resume from the last checkpoint), on the GPUs Slurm gave the job. A run over several nodes is started on
each of them by `srun` (tasks.train.node), its ranks joined at a rendezvous on this node. When Slurm
signals the job before its walltime, or on preemption, submitit calls `checkpoint`: the training stops
(it resumes from its last saved checkpoint) and the job is requeued, with the same id and arguments.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from submitit.helpers import Checkpointable, DelayedSubmission

from tasks.layout import RunDir
from tasks.plan import RunSpec
from tasks.train import launch

RDZV_PORT = 29500


class Point(Checkpointable):
    def __init__(
        self,
        spec: dict,
        run_dir: str,
        cache_dir: str,
        threads: int,
        mlflow_uri: str | None,
        mlflow_run_id: str | None,
        timeout_s: float | None,
    ):
        self.spec, self.run_dir, self.cache_dir, self.threads = spec, run_dir, cache_dir, threads
        self.mlflow_uri, self.mlflow_run_id, self.timeout_s = mlflow_uri, mlflow_run_id, timeout_s

    def __call__(self) -> launch.RunResult:
        spec, run = RunSpec.from_dict(self.spec), RunDir(Path(self.run_dir))
        job, restarts = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_RESTART_COUNT", "0")
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "none")
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        run.note(f"slurm job {job} (restart {restarts}) on {node}, GPUs {gpus}")
        return launch.train_run(
            spec,
            run,
            Path(self.cache_dir),
            self.threads,
            self.mlflow_uri,
            self.mlflow_run_id,
            self.timeout_s,
            # Slurm's CUDA_VISIBLE_DEVICES holds the job's GPUs already; several nodes are srun's to start.
            command=self._nodes_command(spec, run) if spec.nodes > 1 else None,
        )

    def _nodes_command(self, spec: RunSpec, run: RunDir) -> list[str]:
        """srun starting tasks.train.node once on every node of the job, meeting at this node's rendezvous."""
        port = RDZV_PORT + int(os.environ["SLURM_JOB_ID"]) % 1000  # two jobs sharing a head node meet apart
        node = [sys.executable, "-m", "tasks.train.node", str(run.path), self.cache_dir]
        node += ["--rdzv-endpoint", f"{head_address()}:{port}", "--threads", str(self.threads)]
        if self.mlflow_uri and self.mlflow_run_id:
            node += ["--mlflow-uri", self.mlflow_uri, "--mlflow-run-id", self.mlflow_run_id]
        # --overlap: this batch step holds the job's CPUs, and a step inside it would otherwise wait forever.
        srun = ["srun", "--overlap", f"--nodes={spec.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
        return srun + node

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        launch.stop_all()  # the run resumes from its last checkpoint when the requeued job starts
        return super().checkpoint(*args, **kwargs)


def head_address() -> str:
    """The address Slurm reaches the job's first node at (its NodeAddr, the node name unless the site sets
    another), where the rendezvous listens."""
    nodes = subprocess.check_output(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], text=True)
    node = subprocess.check_output(["scontrol", "show", "node", "-o", nodes.split()[0]], text=True)
    return re.search(r"\bNodeAddr=(\S+)", node).group(1)
