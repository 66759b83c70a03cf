"""Which process runs a sweep's flow run, told from outside it: the record each flow run leaves in its sweep's
folder (SweepDir.flow_runs), whether the process a record names is gone, and a watch on the worker that
started this process, and one on this process by a child of its own that outlives it.

A SIGKILLed flow process cannot report its end, so Prefect shows its flow run `Running` for good. The next
invocation of the sweep reads the records, finds the processes that are gone and sets their flow runs
Crashed (tasks.crashes.flow_run_recorded). Plain Python: the Prefect calls are in tasks/crashes.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class FlowRunRecord:
    """A flow run of a sweep and the process that runs it."""

    flow_run_id: str
    host: str
    pid: int
    pid_start: int | None
    """The process's start time (/proc/<pid>/stat, clock ticks after boot): tells a reused pid apart."""
    boot_id: str | None
    """The kernel's boot id: after a reboot no process of before is alive, whatever its pid."""
    started_at: float
    api: str
    """The Prefect API the flow run is in (a server's URL, or the temporary server of a Prefect home)."""
    worker_pid: int | None = None
    """The worker (or `serve` process) that started this process, when one did."""

    @classmethod
    def of_this_process(cls, flow_run_id: str, api: str, worker_pid: int | None) -> FlowRunRecord:
        pid = os.getpid()
        return cls(flow_run_id, socket.gethostname(), pid, process_start(pid), boot_id(), time.time(), api, worker_pid)

    @classmethod
    def from_dict(cls, d: dict) -> FlowRunRecord:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)

    def where(self) -> str:
        return f"flow process {self.pid} on host {self.host}"


def boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """The start time of a live process (None when it is gone, or a zombie); -1 where /proc cannot tell
    (not Linux) but the pid is in use."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _pid_in_use(pid)
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ", which may hold spaces
    if fields[0] in ("Z", "X"):  # dead, not yet reaped by its parent
        return None
    return int(fields[19])


def _pid_in_use(pid: int) -> int | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return -1


def is_gone(record: FlowRunRecord) -> bool | None:
    """Whether the process of a record has ended: True, False, or None when it ran on another host (a process
    there cannot be looked at from here)."""
    if record.host != socket.gethostname():
        return None
    if record.boot_id and boot_id() not in (None, record.boot_id):
        return True
    start = process_start(record.pid) if _PROC.is_dir() else _pid_in_use(record.pid)
    if start is None:
        return True
    return record.pid_start not in (None, -1) and start not in (-1, record.pid_start)


def watch_parent(parent_pid: int, on_gone: Callable[[], None], interval_s: float = 2.0) -> threading.Thread:
    """Call `on_gone` (once, on a daemon thread) when the parent process `parent_pid` is gone: this process is then
    handed to another parent, so os.getppid() changes."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        on_gone()

    thread = threading.Thread(target=watch, name="watch-worker", daemon=True)
    thread.start()
    return thread


def start_child_reaper() -> subprocess.Popen:
    """A watchdog process that ends this process's children once this process is gone without ending them
    (SIGKILLed): Prefect's temporary API server, which `scaling run` starts and nothing else stops, and any
    training process still there (each also watches its launcher)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tasks.flow_runs", str(os.getpid())],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of the terminal's reach: Ctrl-C stops the sweep, which then stops this
    )


def _children(pid: int) -> dict[int, int]:
    """The live child processes of `pid`, each with its start time."""
    found = {}
    for d in _PROC.iterdir():
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if d.name.isdigit() and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found[int(d.name)] = int(fields[19])
    return found


def reap_children(parent_pid: int, interval_s: float = 1.0, grace_s: float = 5.0) -> list[int]:
    """Note `parent_pid`'s children while it lives (this process is one of them); once it is gone, end those of
    them still running (SIGTERM, then SIGKILL after `grace_s`). Returns the pids it had to end."""
    me, seen = os.getpid(), {}
    while os.getppid() == parent_pid:
        seen = {pid: start for pid, start in _children(parent_pid).items() if pid != me}
        time.sleep(interval_s)
    left = [pid for pid, start in seen.items() if process_start(pid) == start]
    for pid in left:
        _signal(pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(process_start(pid) == seen[pid] for pid in left):
        time.sleep(0.2)
    for pid in left:
        if process_start(pid) == seen[pid]:
            _signal(pid, signal.SIGKILL)
    return left


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    if _PROC.is_dir():
        reap_children(int(sys.argv[1]))
