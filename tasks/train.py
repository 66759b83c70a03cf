"""Train: run one grid point as its own process group, skip it when it is already finished.

The training itself is `tasks.trainer`, started as a separate process (torchrun for several
ranks) in a new session, so that cancelling the sweep can end the whole group: Prefect does not
kill a flow's child processes on cancellation.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.plan import RunSpec

FINISHED = ("completed", "diverged")
_live: dict[int, subprocess.Popen] = {}
_live_lock = threading.Lock()


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: str
    """completed | diverged | failed"""
    skipped: bool
    process_s: float
    """Wall time of the training process, start-up included (0 when skipped)."""
    message: str = ""


def read_status(run_dir: Path) -> dict:
    p = run_dir / "status.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def stop_all(signum=None, frame=None) -> None:
    """End every live training process group (on cancellation, SIGTERM or interpreter exit)."""
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
    if signum is not None:
        raise SystemExit(128 + signum)


def install_stop_handlers() -> None:
    """Make SIGTERM (a cancelled or stopped flow run) end the training groups too."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop_all)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(spec: RunSpec, run_dir: Path) -> list[str]:
    if spec.ranks == 1:
        return [sys.executable, "-m", "tasks.trainer", str(run_dir)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={spec.ranks}",
        "-m",
        "tasks.trainer",
        str(run_dir),
    ]


def run_point(
    spec: RunSpec,
    run_dir: Path,
    cache_dir: Path,
    threads: int,
    mlflow_uri: str | None = None,
    mlflow_run_id: str | None = None,
    timeout_s: float | None = None,
) -> RunResult:
    """Train one grid point to its end: skip it if finished, resume it if a checkpoint exists."""
    status = read_status(run_dir).get("status")
    if status in FINISHED:
        return RunResult(spec.run_id, status, skipped=True, process_s=0.0)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").unlink(missing_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec.to_dict(), indent=1))
    launch = {
        "cache_dir": str(cache_dir),
        "threads": threads,
        "master_port": _free_port(),
        "mlflow_uri": mlflow_uri,
        "mlflow_run_id": mlflow_run_id,
        "launcher_pid": os.getpid(),
    }
    (run_dir / "launch.json").write_text(json.dumps(launch, indent=1))
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
    }
    env.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    # DeepSpeed JIT-builds a communication op on first use. Keep the build inside this environment:
    # in the shared ~/.cache two checkouts invalidate each other's build and rebuild it (~40 s) per run.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    t0 = time.time()
    with open(run_dir / "train.log", "ab") as logf:
        proc = subprocess.Popen(
            _command(spec, run_dir), cwd=root, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        with _live_lock:
            _live[proc.pid] = proc
        try:
            rc = proc.wait(timeout=timeout_s)
            message = "" if rc == 0 else f"training process exited with code {rc}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            message = f"stopped after resources.timeout_s = {timeout_s:.0f} s"
        finally:
            with _live_lock:
                _live.pop(proc.pid, None)
    status = read_status(run_dir).get("status", "failed")
    if status == "failed" and not message:
        message = "training process exited without writing status.json"
    if message:
        message += f"; see {run_dir / 'train.log'}"
    process_s = _add_timing(run_dir, time.time() - t0, message)
    return RunResult(spec.run_id, status, skipped=False, process_s=process_s, message=message)


def _add_timing(run_dir: Path, seconds: float, message: str) -> float:
    """Accumulate process time over the invocations of a point (a resumed run counts all of them)."""
    path = run_dir / "timing.json"
    total = (json.loads(path.read_text())["process_s"] if path.is_file() else 0.0) + seconds
    path.write_text(json.dumps({"process_s": total, "message": message}))
    return total


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
