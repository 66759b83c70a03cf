"""One node's share of a run over several nodes:

    python -m tasks.train.node RUN_DIR CACHE_DIR --rdzv-endpoint HOST:PORT [--threads N]
        [--mlflow-uri URI --mlflow-run-id ID]

started once on each of the run's `nodes` nodes, by a cluster executor (`srun` runs it on every node of
the job) or by hand. RUN_DIR, on a filesystem every node sees, holds the run's spec.json (the plan's
RunSpec, `nodes` > 1); CACHE_DIR its token cache. Each node starts torchrun for its ranks_per_node ranks,
and torchrun's c10d rendezvous at HOST:PORT (served by the node whose address that is, by the first
to come on one machine) joins them into one process group of `ranks` ranks; ZeRO shards across all of
them. The rendezvous listens where its endpoint says: on a cluster, the head node's network address.

The one-writer lock of the run folder (tasks.layout) is a single machine's: every node of the run
writes the folder at once, so here the lock is left to the job's scheduler, which starts one job per
run. A finished run is skipped on every node. The exit status is torchrun's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from tasks import status as st
from tasks.layout import RunDir
from tasks.plan import RunSpec
from tasks.train.launch import ROOT, environment

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def command(spec: RunSpec, run: RunDir, launch_file: Path, endpoint: str) -> list[str]:
    """torchrun for this node's ranks of the run, joining the others at the c10d rendezvous `endpoint`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",  # across nodes: the rendezvous the other nodes join, at --rdzv-endpoint
        f"--nnodes={spec.nodes}",
        f"--nproc-per-node={spec.ranks_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={spec.run_id}",
        "--max-restarts=0",
        "-m",
        "tasks.train.process",
        str(run.path),
        str(launch_file),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tasks.train.node", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("cache_dir", type=Path)
    ap.add_argument("--rdzv-endpoint", required=True, metavar="HOST:PORT")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mlflow-uri")
    ap.add_argument("--mlflow-run-id")
    args = ap.parse_args(argv)
    run = RunDir(args.run_dir)
    spec = RunSpec.from_dict(run.read_spec())
    if (done := run.read_status().get("status")) in st.FINISHED:
        print(f"{spec.name}: already {done}, skipped", flush=True)
        return 0
    launch = {
        "cache_dir": str(args.cache_dir),
        "threads": args.threads,
        "master_port": None,
        "store_fd": None,  # torchrun's rendezvous makes the process group's store
        "mlflow_uri": args.mlflow_uri,
        "mlflow_run_id": args.mlflow_run_id,
        "launcher_pid": os.getpid(),
        "gpus": [],
    }
    launch_file = run.write_launch(launch)
    try:
        with open(run.log, "ab") as log:
            return subprocess.call(
                command(spec, run, launch_file, args.rdzv_endpoint),
                cwd=ROOT,
                # Ranks on other machines reach this one's over the network, not the loopback interface.
                env=environment(args.threads, (), one_node=args.rdzv_endpoint.rsplit(":", 1)[0] in LOOPBACK),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    finally:
        launch_file.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
