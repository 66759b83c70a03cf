"""A network namespace whose one interface is the loopback: where the tests start engines that listen on
every interface and take no address to bind (Slurm's daemons, Ray's), so that nothing outside it can
reach them. Everything that talks to them runs in it too (`command`)."""

from __future__ import annotations

import shutil
import subprocess
import uuid


def missing() -> list[str]:
    return [b for b in ("ip", "nsenter") if not shutil.which(b)]


class LoopbackNamespace:
    def __init__(self, prefix: str):
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.path = f"/run/netns/{self.name}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(self.command("ip", "link", "set", "lo", "up"), check=True)
        # Servers that look up their listening address with AI_ADDRCONFIG (Slurm's) find none where only
        # loopback addresses are configured: a private address on the loopback interface itself satisfies it.
        subprocess.run(self.command("ip", "addr", "add", "10.254.0.1/32", "dev", "lo"), check=True)

    def command(self, *argv) -> list[str]:
        """argv run inside the namespace."""
        # nsenter, not `ip netns exec`: that one mounts a /sys of its own, where slurmd finds no cgroups.
        return ["nsenter", f"--net={self.path}", *map(str, argv)]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)
