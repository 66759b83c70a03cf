"""A real two-node Slurm for the tests: Debian's slurm-wlm and munge, its controller and one node daemon per
node started here (each under its node name, on its own port of this machine). They listen on every interface
and take no address to bind, so they run in a loopback-only network namespace (netns.py), with everything
that talks to them (sbatch, squeue, the sweep). Each node offers 2 CPUs and a GRES gpu:2 backed by dummy
character devices, so Slurm assigns GPUs and sets CUDA_VISIBLE_DEVICES as on a GPU node, with no GPU present.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tasks.cluster import netns

NODES = ("n1", "n2")
CONF = """\
ClusterName=scaling
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=5
MinJobAge=600
OverTimeLimit=0
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port=6818 CPUs=2 RealMemory=8000 Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port=6819 CPUs=2 RealMemory=8000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def slurm_missing() -> str | None:
    """Why this machine cannot start a Slurm here, or None."""
    if os.geteuid() != 0:
        return "starting Slurm's daemons in a network namespace needs root"
    missing = [b for b in ("sbatch", "munged") if not shutil.which(b)] + netns.missing()  # sbatch: slurm-wlm's
    return f"not installed: {', '.join(missing)} (make slurm installs slurm-wlm and munge)" if missing else None


@dataclass
class Slurm:
    dir: Path
    ns: netns.LoopbackNamespace

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.dir / "slurm.conf")}

    def command(self, *argv) -> list[str]:
        return self.ns.command(*argv)

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> str:
        proc = subprocess.run(self.command(*argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def jobs(self) -> list[str]:
        """Jobs in the queue (pending, running or requeued), as `id state`."""
        return self.run("squeue", "-h", "-o", "%i %T").split("\n")[:-1]

    def log(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.dir.glob("slurm*.log")))


def start(base: Path, ns: netns.LoopbackNamespace) -> Slurm:
    d = base / "slurm"
    for sub in ("state", "spool", "dev"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for i in range(2 * len(NODES)):  # the fake GPUs: Slurm wants a character device behind each GRES
        os.mknod(d / "dev" / f"nvidia{i}", 0o600 | 0o020000, os.makedev(195, i))
    gres = (f"NodeName={n} Name=gpu File={d}/dev/nvidia[{2 * i}-{2 * i + 1}]\n" for i, n in enumerate(NODES))
    (d / "gres.conf").write_text("".join(gres))
    (d / "slurm.conf").write_text(CONF.format(host=socket.gethostname(), d=d))
    cluster = Slurm(d, ns)
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode:  # one per machine: a socket
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    subprocess.run(["nsenter", f"--net={cluster.ns.path}", "slurmctld"], env=cluster.env, check=True)
    for node in NODES:
        subprocess.run(["nsenter", f"--net={cluster.ns.path}", "slurmd", "-N", node], env=cluster.env, check=True)
    deadline = time.time() + 60
    while cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).split() != ["idle"] * len(NODES):
        if time.time() > deadline:
            stop(cluster)
            raise AssertionError(f"the test Slurm did not come up:\n{cluster.log()}")
        time.sleep(0.5)
    return cluster


def stop(cluster: Slurm) -> None:
    cluster.run("scancel", "--user=root", check=False)
    deadline = time.time() + 60  # the jobs' processes end with their jobs, which need the daemons for it
    while cluster.jobs() and time.time() < deadline:
        time.sleep(0.5)
    for pid_file in [*cluster.dir.glob("slurmd-*.pid"), cluster.dir / "slurmctld.pid"]:  # the nodes' first
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], check=False)
    time.sleep(1)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with netns.engine("Slurm", slurm_missing(), start, stop, tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster
