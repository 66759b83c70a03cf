"""The GPUs of a node, and which of them each run gets: one GPU per rank, disjoint between runs.

A worker sees its node's GPUs (all of them, or the ones its scheduler listed in CUDA_VISIBLE_DEVICES);
`resources.gpus` may keep a subset. They are cut into groups of `ranks_per_run`, in order ([0, 1],
[2, 3], ... for 2 ranks), so a run's ranks sit next to each other. A run claims a whole free group by
locking one file per GPU in a folder of this node (`flock`, so a claim ends with the process that held
it, however it ends), and its training process sees only that group through CUDA_VISIBLE_DEVICES:
its rank r is cuda:r there (tasks.train.setup binds it first thing). The locks keep two runs off one
GPU whichever flow run, worker or thread they come from; how many runs wait for GPUs at once is
Prefect's to count (tasks.steps, a global concurrency limit per node). CPU-only nodes have no GPUs,
and their runs claim nothing.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.config import ConfigError, ResourcesConfig

POLL_S = 1.0


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA names them to a child: CUDA_VISIBLE_DEVICES's entries where it is
    set (ids or UUIDs), else 0..n-1; none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def node_gpus(wanted: list[int] | None, visible: list[str] | None = None) -> list[str]:
    """The GPUs this node's runs may use: `resources.gpus` (indexes into the visible ones) or all."""
    visible = visible_gpus() if visible is None else visible
    if wanted is None:
        return visible
    if bad := [i for i in wanted if not 0 <= i < len(visible)]:
        raise ConfigError(
            f"resources.gpus: {bad} not among this node's {len(visible)} visible GPU(s) (indexes 0..{len(visible) - 1})"
            if visible
            else f"resources.gpus: {wanted} named, but this node has no GPU visible (leave it out on CPUs)"
        )
    return [visible[i] for i in dict.fromkeys(wanted)]


def runs_at_once(resources: ResourcesConfig, gpus: list[str] | None = None) -> int:
    """resources.concurrency, else as many runs as the node's GPUs hold (1 on a CPU)."""
    gpus = node_gpus(resources.gpus) if gpus is None else gpus  # checks resources.gpus on this node
    if resources.concurrency:
        return resources.concurrency
    return max(1, len(groups(gpus, resources.ranks_per_run))) if gpus else 1


def groups(gpus: list[str], ranks: int) -> list[tuple[str, ...]]:
    """The node's GPUs cut into runs' groups of `ranks`, in order; a remainder short of a group is unused."""
    return [tuple(gpus[i : i + ranks]) for i in range(0, len(gpus) - ranks + 1, ranks)]


def lock_dir() -> Path:
    """A folder of this node, and of this user, for the GPUs' lock files."""
    return Path(os.environ.get("SCALING_GPU_LOCKS") or Path(tempfile.gettempdir()) / f"scaling-gpus-{os.getuid()}")


@contextmanager
def claim(
    gpus: list[str], ranks: int, on_wait: Callable[[], None] | None = None, locks: Path | None = None
) -> Iterator[tuple[str, ...]]:
    """Hold a free group of `ranks` GPUs for the block (waiting until one is free); () without GPUs."""
    if not gpus:
        yield ()
        return
    options = groups(gpus, ranks)
    if not options:
        raise ValueError(f"resources.ranks_per_run = {ranks}: this node's runs have {len(gpus)} GPU(s)")
    locks = locks or lock_dir()
    locks.mkdir(parents=True, exist_ok=True)
    waited = False
    while (held := _take_a_group(options, locks)) is None:
        if on_wait and not waited:
            on_wait()
        waited = True
        time.sleep(POLL_S)
    group, fds = held
    try:
        yield group
    finally:
        for fd in fds:
            os.close(fd)  # closing the file drops its lock


def _take_a_group(options: list[tuple[str, ...]], locks: Path) -> tuple[tuple[str, ...], list[int]] | None:
    for group in options:
        fds = []
        for gpu in group:
            fd = os.open(locks / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                break
            fds.append(fd)
        else:
            return group, fds
        for fd in fds:
            os.close(fd)
    return None


def set_rank_device(local_rank: int) -> str:
    """Make this rank's GPU the current device before anything touches one; returns the device's name.
    DeepSpeed and torch.distributed otherwise start every rank on cuda:0. On a CPU: "cpu"."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"
