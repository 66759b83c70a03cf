"""Launch: train one run as its own process group, or skip it when it is already finished.

The training itself is `tasks.train.process`, started as a separate process (under tasks.train.ranks for
several ranks) in a new session, so that cancelling the sweep can end the whole group: Prefect does not
kill a flow's child processes on cancellation. The process group's store listens on a socket bound here
to 127.0.0.1, not on torch.distributed's own, which would listen on every interface.
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
from dataclasses import dataclass
from pathlib import Path

from tasks import status as st
from tasks.layout import RunDir
from tasks.plan import RunSpec
from tasks.track.collect import run_damage
from tasks.train import disk

ROOT = Path(__file__).resolve().parents[2]
_live: dict[int, subprocess.Popen] = {}
_live_lock = threading.Lock()
_stopping = threading.Event()  # set by stop_all: the sweep is being cancelled, and nothing is retried
_stoppers: list[Callable[[], None]] = []  # what else stop_all ends: a cluster executor's jobs


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: str
    """tasks.status: completed | diverged | failed"""
    skipped: bool
    process_s: float
    """Wall time of the training process, start-up included (0 when skipped)."""
    message: str = ""


def also_stop(stop: Callable[[], None]) -> None:
    """Have stop_all call `stop` too: an executor's way to end the runs it handed to its engine."""
    if stop not in _stoppers:
        _stoppers.append(stop)


def stop_all() -> None:
    """End every live training process group, and the runs handed to an engine (on cancellation, SIGTERM
    or interpreter exit)."""
    _stopping.set()
    for stop in _stoppers:
        stop()
    with _live_lock:
        procs = list(_live.values())
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def stopping() -> bool:
    """Whether this process is ending its training groups (a failed run then is not worth a retry)."""
    return _stopping.is_set()


def install_stop_handlers() -> None:
    """Make SIGTERM (a cancelled or stopped flow run) end the training groups first, then do what it did
    before: Prefect puts a handler of its own in place while each flow runs, which records the flow run's
    end but would wait for the runs to end by themselves; the flow calls this again inside each subflow."""
    if threading.current_thread() is not threading.main_thread():
        return
    before = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame) -> None:
        stop_all()
        if callable(before):
            before(signum, frame)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _store_socket() -> socket.socket:
    """A socket listening on 127.0.0.1 at a free port, for rank 0 to serve the process group's store on."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        s.listen()  # from now on: the other ranks may connect before rank 0 serves
    except OSError:
        s.close()
        raise
    return s


def _command(spec: RunSpec, run: RunDir, launch: Path, lock_fd: int, store_fd: int) -> list[str]:
    process = [sys.executable, "-m", "tasks.train.process", str(run.path), str(launch)]
    if spec.ranks == 1:
        return process
    return [sys.executable, "-m", "tasks.train.ranks", str(spec.ranks), str(lock_fd), str(store_fd), *process]


def environment(threads: int, gpus: tuple[str, ...], one_node: bool = True) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if gpus:  # the run's own GPUs (tasks.train.devices): its rank r is cuda:r among them
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    # DeepSpeed JIT-builds a communication op on first use. Keep the build inside this environment:
    # in the shared ~/.cache two checkouts invalidate each other's build and rebuild it (~40 s) per run.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    if one_node:
        # Gloo's ranks listen for each other on the address the hostname resolves to, which on many hosts is
        # not a loopback one: the loopback interface keeps them on 127.0.0.1, unless the user says otherwise.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")  # NCCL's bootstrap likewise; its ranks share one machine
    return env


def _wait(proc: subprocess.Popen, timeout_s: float | None) -> str:
    """Wait for the training process group; the message says why it ended badly ('' when it exited 0)."""
    with _live_lock:
        _live[proc.pid] = proc
    try:
        rc = proc.wait(timeout=timeout_s)
        return "" if rc == 0 else f"training process exited with code {rc}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"stopped after resources.timeout_s = {timeout_s:.0f} s"
    finally:
        with _live_lock:
            _live.pop(proc.pid, None)


def train_run(
    spec: RunSpec,
    run: RunDir,
    cache_dir: Path,
    threads: int,
    mlflow_uri: str | None = None,
    mlflow_run_id: str | None = None,
    timeout_s: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    gpus: tuple[str, ...] = (),
    command: list[str] | None = None,
) -> RunResult:
    """Train one run to its end: skip it if finished, resume it if a checkpoint exists. One launcher at a
    time: another one's launch of the same run waits for it (`on_wait` hears of that), then skips. On a GPU
    node `gpus` are the run's, one per rank (tasks.train.devices.claim). `command` starts the training
    in place of this machine's processes: srun over a Slurm job's nodes (tasks.cluster.slurm_job)."""
    with run.lock(on_wait) as lock_fd, _store_socket() as store:
        if (done := finished(run)) is not None:
            return RunResult(spec.run_id, done, skipped=True, process_s=0.0)
        if (status := run.read_status()).get("status") in st.FINISHED:
            run.restart(f"{run_damage(run, status.get('rows'))}: training it again from the start")
        launch = {
            "cache_dir": str(cache_dir),
            "threads": threads,
            "master_port": store.getsockname()[1],
            "store_fd": store.fileno(),
            "mlflow_uri": mlflow_uri,
            "mlflow_run_id": mlflow_run_id,
            "launcher_pid": os.getpid(),
            "gpus": list(gpus),
        }
        try:
            run.clear_status()
            run.write_spec(spec.to_dict())
            launch_file = run.write_launch(launch)
        except OSError as err:  # still full since the last try: the same clean error, before any compute
            if not disk.is_disk_full(err, run.path):
                raise
            return RunResult(spec.run_id, st.FAILED, skipped=False, process_s=0.0, message=disk.message(run))
        t0 = time.time()
        try:
            with open(run.log, "ab") as logf:
                proc = subprocess.Popen(
                    command or _command(spec, run, launch_file, lock_fd, store.fileno()),
                    cwd=ROOT,
                    env=environment(threads, gpus),
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(lock_fd, store.fileno()),
                )
                store.close()  # the training process has its own: rank 0 alone listens
                message = _wait(proc, timeout_s)
        finally:
            launch_file.unlink(missing_ok=True)
        status = run.status() or st.FAILED
        if status == st.FAILED and _disk_full(proc.returncode, run):
            disk.clear_partial_writes(run)  # the retry gets back the space the torn writes held
            message = disk.message(run)
        elif status == st.FAILED and not message:
            message = "training process exited without writing status.json"
        if message:
            message += f"; see {run.log}"
        try:
            process_s = run.add_timing(time.time() - t0, message)
        except OSError:  # a full disk: the timing is a convenience, the message is what matters
            process_s = time.time() - t0
    return RunResult(spec.run_id, status, skipped=False, process_s=process_s, message=message)


def finished(run: RunDir) -> str | None:
    """The run's status word if it is finished with whole records (a re-run skips it), else None."""
    status = run.read_status()
    if status.get("status") in st.FINISHED and run_damage(run, status.get("rows")) is None:
        return status["status"]
    return None


def _disk_full(returncode: int | None, run: RunDir) -> bool:
    # A full disk may break the exit itself (Python exits 120 when it cannot flush the log), so a failed
    # process on a full filesystem counts too.
    return returncode == disk.EXIT_DISK_FULL or (returncode != 0 and disk.free_bytes(run.path) < 2**20)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
