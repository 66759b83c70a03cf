"""The tests' Slurm and Ray, for trying the executors by hand or benchmarking them on this machine:

    python -m tests.tasks.cluster.engines COMMAND [ARGS...]

starts the two-node Slurm (slurm_cluster) and a Ray head (ray_cluster) in one loopback-only network
namespace, runs COMMAND in it with SLURM_CONF set and the Ray head's address in RAY_ADDRESS (where Ray's
client looks when given none), and stops both when it ends. Root, slurm-wlm and munge, as for the tests
(`make slurm`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.tasks.cluster import netns, ray_cluster, slurm_cluster


def stopped(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if why := slurm_cluster.slurm_missing() or ray_cluster.ray_missing():
        print(f"cannot start the engines here: {why}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, stopped)  # killed, it still stops the engines on its way out
    with tempfile.TemporaryDirectory(prefix="scaling-engines-") as tmp, netns.namespace("scaling-engines") as ns:
        slurm = slurm_cluster.start(Path(tmp), ns)
        try:
            ray = ray_cluster.start(Path(tmp) / "ray", ns)
            try:
                # The user's own HOME: what COMMAND built before (DeepSpeed's op, Prefect's database) stays built.
                env = {**slurm.env, "RAY_ADDRESS": ray.address, "RAY_USAGE_STATS_ENABLED": "0"}
                return subprocess.run(ns.command(*argv), env=env).returncode
            finally:
                ray_cluster.stop(ray)
        finally:
            slurm_cluster.stop(slurm)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
