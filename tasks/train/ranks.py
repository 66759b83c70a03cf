"""The ranks of a run: `python -m tasks.train.ranks RANKS LOCK_FD STORE_FD COMMAND...`.

It stands where torchrun stood, as the leader of the run's process group (tasks.train.launch), without
torchrun's rendezvous store, which listens on every interface. The launcher binds the store's socket
to 127.0.0.1; this hands it to rank 0 alone, which serves the process group's store on it
(tasks.train.setup), and hands the run's one-writer lock to every rank, so that the lock lasts as long
as any of them. Like torchrun, it ends the other ranks when one fails; unlike it, it exits with that
rank's own code, so that a full disk (tasks.train.disk) still reads as one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_S = 10.0
"""How long the other ranks have to end on SIGTERM, once one has failed, before they are killed."""


def main(ranks: int, lock_fd: int, store_fd: int, command: list[str]) -> int:
    signal.signal(signal.SIGTERM, _exit)  # a SIGTERM for this process alone must not orphan its ranks
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(ranks):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(ranks)}
            env["PYTHONUNBUFFERED"] = "1"  # as under torchrun: a killed rank's last lines still reach the log
            fds = (lock_fd, store_fd) if rank == 0 else (lock_fd,)
            procs.append(subprocess.Popen(command, env=env, pass_fds=fds))
        os.close(store_fd)  # rank 0 holds it now: a peer that connects after rank 0 died is refused
        return _first_failure(procs)
    finally:
        _end(procs)


def _exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _first_failure(procs: list[subprocess.Popen]) -> int:
    """Wait for the ranks in the order they end; the first that fails gives the exit code (0 if none)."""
    running = {p.pid: (rank, p) for rank, p in enumerate(procs)}
    while running:
        # WNOWAIT: learn which rank ended first, and leave the reaping (its returncode) to its Popen.
        rank, proc = running.pop(os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT).si_pid)
        if code := proc.wait():
            print(f"rank {rank} exited with code {code}: ending the other ranks", file=sys.stderr, flush=True)
            return code if code > 0 else 128 - code  # killed by a signal: the shell's 128 + signal
    return 0


def _end(procs: list[subprocess.Popen]) -> None:
    """SIGTERM the ranks still running, then SIGKILL those that outlast GRACE_S."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.terminate()
    deadline = time.monotonic() + GRACE_S
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
