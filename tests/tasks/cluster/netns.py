"""A network namespace whose one interface is the loopback: where the tests start engines that listen on
every interface and take no address to bind (Slurm's daemons, Ray's), so that nothing outside it can
reach them. Everything that talks to them runs in it too (`command`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


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

    def pids(self) -> list[int]:
        """The processes inside the namespace, and their command lines."""
        inode, found = os.stat(self.path).st_ino, []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and os.stat(proc / "ns" / "net").st_ino == inode:
                    found.append((int(proc.name), (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except OSError:  # gone meanwhile, or not ours to read
                continue
        return found

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@contextmanager
def namespace(prefix: str) -> Iterator[LoopbackNamespace]:
    """A LoopbackNamespace for the block, deleted after it whatever happened in it."""
    ns = LoopbackNamespace(prefix)
    try:
        yield ns
    finally:
        ns.delete()


def required(what: str, why: str | None) -> None:
    """Skip a test whose engine cannot start here (`why`); in CI, which sets SCALING_REQUIRE_CLUSTERS because
    the engines' tests must run there, fail it instead."""
    if why:
        if os.environ.get("SCALING_REQUIRE_CLUSTERS"):
            pytest.fail(f"{what} is required here (SCALING_REQUIRE_CLUSTERS) but {why}")
        pytest.skip(why)


@contextmanager
def engine(what: str, why: str | None, start: Callable, stop: Callable, base: Path) -> Iterator:
    """An engine the tests start (`start(base, ns)`, `stop(cluster)`) in a namespace of its own, for the
    block; `why` it cannot start here, if anything, skips or fails the test first (`required`)."""
    required(what, why)
    with namespace(f"scaling-{what.lower()}") as ns:
        cluster = start(base, ns)
        try:
            yield cluster
        finally:
            stop(cluster)
