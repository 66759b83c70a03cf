"""A local Ray instance for the tests, started as a user starts one (its `start --head` command), with 2 CPUs and
2 GPUs declared (none present: Ray hands them out and sets CUDA_VISIBLE_DEVICES all the same). Ray's
processes listen on every interface whatever --node-ip-address says, so they run in a loopback-only
network namespace (netns.py), with the sweep that uses them; their home (Ray's auth token) is the test's."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tasks.cluster import netns

PORT = 6380


@dataclass
class Ray:
    home: Path
    ns: netns.LoopbackNamespace
    address: str = f"127.0.0.1:{PORT}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home), "RAY_USAGE_STATS_ENABLED": "0"}

    def command(self, *argv) -> list[str]:
        return self.ns.command(*argv)

    @property
    def temp_dir(self) -> str:
        return f"/tmp/ray-{self.ns.name.rsplit('-', 1)[-1]}"


def ray_exe() -> str:
    return str(Path(sys.executable).with_name("ray"))


def ray_missing() -> str | None:
    """Why this machine cannot start a Ray here, or None."""
    if os.geteuid() != 0 or netns.missing():
        return "the Ray test needs root and ip/nsenter for its network namespace"
    return None


def start(base: Path, ns: netns.LoopbackNamespace) -> Ray:
    base.mkdir(parents=True, exist_ok=True)
    cluster = Ray(base, ns)
    start = [ray_exe(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(PORT)]
    start += ["--num-cpus", "2", "--num-gpus", "2", "--include-dashboard", "false", "--disable-usage-stats"]
    start += ["--object-store-memory", str(100 * 2**20)]  # the default takes a share of /dev/shm
    # A session folder of its own (not /tmp/ray, which a second Ray here would share), short enough for the
    # Unix sockets inside it.
    start += ["--temp-dir", cluster.temp_dir]
    subprocess.run(cluster.command(*start), env=cluster.env, check=True, capture_output=True, timeout=120)
    return cluster


def stop(cluster: Ray) -> None:
    """Ends this Ray's processes: those in its namespace that are Ray's. Not `ray stop`, which ends every
    Ray on the machine, another test's too."""
    for sig, patience in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        for pid, _ in ray_processes(cluster):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + patience
        while ray_processes(cluster) and time.time() < deadline:
            time.sleep(0.2)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def ray_processes(cluster: Ray) -> list[tuple[int, str]]:
    return [(pid, cmd) for pid, cmd in cluster.ns.pids() if "ray" in cmd.lower()]


@pytest.fixture(scope="module")
def ray(tmp_path_factory):
    with netns.engine("Ray", ray_missing(), start, stop, tmp_path_factory.mktemp("ray")) as cluster:
        yield cluster
