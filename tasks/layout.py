"""Where generated things go: one output folder, laid out by sweep name and run id. This module is the one
owner of every folder and file name in it.

    <output>/data/tokens-<key>/     token caches (shared by sweeps on the same data; tasks.data.cache)
    <output>/runs/<run_id>/         one run: RunDir (spec, launch, status, timing, curve, events, checkpoints, log)
    <output>/sweeps/<name>/         SweepDir (runs.parquet, curves.parquet, events.parquet, fits.json,
                                    sweep.yaml, report/, flow-runs/<flow run id>.json while a flow run
                                    of the sweep is live)
    <output>/comparisons/<a>+<b>/   a report of several sweeps
    <output>/mlflow.db, mlartifacts/  the default MLflow tracking store
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tasks.atomic import write_atomic
from tasks.status import FINISHED

CHECKPOINT_DONE = "COMPLETE"
"""The marker a checkpoint folder (ckpt/step<N>/) gets once every rank's files are in it; DeepSpeed writes none."""


def complete_checkpoints(root: Path) -> list[Path]:
    """The checkpoint folders under `root` that have their marker, oldest step first."""
    return sorted((p.parent for p in root.glob(f"step*/{CHECKPOINT_DONE}")), key=lambda p: int(p.name[4:]))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _flock(fd: int, path: Path, block: bool) -> bool:
    """Take the exclusive lock; False when another holds it and `block` is off."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(
                err.errno,
                f"{path}: this file system does not support flock (Lustre mounted without -o flock, some FUSE "
                "mounts), so two launchers of a run could train it at once; put the output folder on one that "
                "does (local disk, NFSv4, GPFS, Lustre with -o flock) with --output or $SCALING_OUTPUT",
            ) from None
        raise


def _lock_holder(fd: int, patience: float = 2.0) -> str:
    """Who holds the lock, as its holder wrote it. A holder writes its line just after it takes the lock, so
    an empty file is read again for a moment before it is reported as anonymous."""
    deadline = time.monotonic() + patience
    while not (line := os.pread(fd, 200, 0).decode(errors="replace").strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return line or "another launcher"


@dataclass(frozen=True)
class RunDir:
    """One run's folder. status.json is written last by the training process (rank 0), and only there."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    spec = property(lambda self: self.path / "spec.json")
    """The RunSpec (tasks.plan.spec), written by the launcher before each training process."""
    lock_file = property(lambda self: self.path / "lock")
    """flock'ed by the one launcher (and its training process) that writes the run: RunDir.lock."""
    status_file = property(lambda self: self.path / "status.json")
    timing = property(lambda self: self.path / "timing.json")
    """Process time summed over the run's invocations, and the last one's message."""
    curve = property(lambda self: self.path / "curve")
    """Parquet parts of the run's curve (tasks.track.curves)."""
    events = property(lambda self: self.path / "events")
    """Parquet parts of the run's events (tasks.track.events), committed with the curve."""
    ckpt = property(lambda self: self.path / "ckpt")
    log = property(lambda self: self.path / "train.log")
    synced = property(lambda self: self.path / "mlflow.json")
    """What of the run reached which MLflow store (tasks.track.mlflow_runs)."""
    slurm_job = property(lambda self: self.path / "slurm.json")
    """The run's Slurm job: its id and the requeues its task has seen (tasks.cluster.slurm)."""
    kubernetes_flow_run = property(lambda self: self.path / "kubernetes.json")
    """The run's scaling-point flow run and its attempt number (tasks.cluster.kubernetes)."""
    slurm_logs = property(lambda self: self.path / "slurm")
    """submitit's folder for the run's jobs: the pickled job, its result and the job's own output."""

    def note(self, line: str) -> None:
        """A timestamped line in the run's log: where an invocation of it trains (a Slurm job, a Ray task)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", file=log, flush=True)

    def read_spec(self) -> dict:
        return json.loads(self.spec.read_text())

    def write_spec(self, spec: dict) -> None:
        write_atomic(self.spec, json.dumps(spec, indent=1))

    def write_launch(self, launch: dict) -> Path:
        """A launch record of this writer's own (launch-<host>-<pid>-<random>.json): where its training process
        finds the token cache, threads, port and MLflow run."""
        path = self.path / f"launch-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        write_atomic(path, json.dumps(launch, indent=1))
        return path

    @contextmanager
    def lock(self, on_wait: Callable[[str], None] | None = None) -> Iterator[int]:
        """Hold the run's one-writer lock: flock on its lock file, for as long as the yielded descriptor is open
        in any process. The launcher hands it to its training process, so a killed launcher's trainer holds it
        until it is gone too. A second launcher waits for it; `on_wait` hears whom it waits for."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _flock(fd, self.lock_file, block=False):
                if on_wait:
                    on_wait(_lock_holder(fd))
                _flock(fd, self.lock_file, block=True)
            holder = f"{socket.gethostname()} pid {os.getpid()}\n".encode()
            os.pwrite(fd, holder, 0)  # overwrite, then cut: the file is never seen empty once written
            os.ftruncate(fd, len(holder))
            yield fd
        finally:
            os.close(fd)

    def read_status(self) -> dict:
        """The final record of the run's last training process ({} while none has finished)."""
        return _read_json(self.status_file)

    def status(self) -> str | None:
        return self.read_status().get("status")

    def write_status(self, **fields) -> None:
        write_atomic(self.status_file, json.dumps(fields, indent=1))

    def clear_status(self) -> None:
        self.status_file.unlink(missing_ok=True)

    def restart(self, why: str) -> None:
        """Drop what the run trained (status, curve, events, checkpoints) so that it trains from step 0; the
        log keeps why."""
        self.clear_status()
        for folder in (self.curve, self.events, self.ckpt):
            shutil.rmtree(folder, ignore_errors=True)
        with open(self.log, "a") as log:
            log.write(f"restarted: {why}\n")

    def read_timing(self) -> dict:
        return _read_json(self.timing)

    def add_timing(self, seconds: float, message: str) -> float:
        """Accumulate process time over the invocations of a run (a resumed run counts all of them)."""
        total = self.read_timing().get("process_s", 0.0) + seconds
        write_atomic(self.timing, json.dumps({"process_s": total, "message": message}))
        return total

    def state(self) -> str:
        """What a re-run would do with this run: its finished status word, `resume at step N`, or `new`."""
        status = self.status()
        if status in FINISHED:
            return status
        done = complete_checkpoints(self.ckpt)
        return f"resume at step {done[-1].name[4:]}" if done else "new"

    def read_synced(self) -> dict:
        return _read_json(self.synced)

    def write_synced(self, record: dict) -> None:
        write_atomic(self.synced, json.dumps(record, indent=1))


@dataclass(frozen=True)
class SweepDir:
    """One sweep's folder: what collect, fit and report write, each read back by the stage after."""

    path: Path
    FITS = "fits.json"
    """Also the name `scaling fit` gives its output beside any runs table."""

    @property
    def name(self) -> str:
        return self.path.name

    runs = property(lambda self: self.path / "runs.parquet")
    curves = property(lambda self: self.path / "curves.parquet")
    events = property(lambda self: self.path / "events.parquet")
    """Every run's events (tasks.track.events), one row an event."""
    fits = property(lambda self: self.path / SweepDir.FITS)
    config = property(lambda self: self.path / "sweep.yaml")
    """The sweep as it ran, overrides applied."""
    report = property(lambda self: self.path / "report")
    recorded = property(lambda self: (self.runs, self.curves, self.fits))
    """What a report needs; the sweep's config is optional."""
    flow_runs = property(lambda self: self.path / "flow-runs")
    """One record (tasks.flow_runs) per flow run of the sweep that has not ended, or whose process ended without
    saying so (SIGKILLed): the next invocation sets those Crashed."""

    def write_flow_run(self, record: dict) -> None:
        write_atomic(self.flow_runs / f"{record['flow_run_id']}.json", json.dumps(record, indent=1))

    def read_flow_runs(self) -> list[dict]:
        """The recorded flow runs, oldest first (an unreadable record is left out)."""
        records = []
        for path in self.flow_runs.glob("*.json"):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(records, key=lambda r: r.get("started_at", 0))

    def drop_flow_run(self, flow_run_id: str) -> None:
        (self.flow_runs / f"{flow_run_id}.json").unlink(missing_ok=True)


@dataclass(frozen=True)
class Layout:
    output: Path

    @classmethod
    def at(cls, output: str | Path | None) -> Layout:
        """The given folder, else $SCALING_OUTPUT, else ./outputs."""
        return cls(Path(output or os.environ.get("SCALING_OUTPUT", "outputs")).expanduser().resolve())

    @classmethod
    def of_sweep(cls, sweep_dir: str | Path) -> Layout:
        """The output folder a sweep folder (<output>/sweeps/<name>) lies in."""
        return cls(Path(sweep_dir).resolve().parents[1])

    @property
    def data(self) -> Path:
        return self.output / "data"

    @property
    def runs(self) -> Path:
        return self.output / "runs"

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.runs / run_id)

    def sweep(self, name: str) -> SweepDir:
        return SweepDir(self.output / "sweeps" / name)

    def comparison(self, names: list[str]) -> Path:
        return self.output / "comparisons" / "+".join(names)

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.output / 'mlflow.db'}"

    @property
    def artifacts(self) -> Path:
        return self.output / "mlartifacts"
