"""A SIGKILLed flow process, or worker, mid-sweep: its flow run ends Crashed (not `Running`), no training process
outlives it, and a re-run trains only what is left, each step once."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from tasks.flow_runs import FlowRunRecord, is_gone, process_start
from tests.conftest import ROOT, scaling, tiny_sweep
from tests.flows.test_deployment import TINY, flow_run_id, free_port, stop_groups
from tests.flows.test_resume import trainers_of

READ_RUNS = """
import json
from prefect import get_client
with get_client(sync_client=True) as c:
    flows = {f.id: f.name for f in c.read_flows()}
    flow_runs = [
        {"id": str(r.id), "flow": flows.get(r.flow_id), "state": r.state.type.value, "message": r.state.message}
        for r in c.read_flow_runs()
    ]
    task_runs = [{"name": t.name, "state": t.state.type.value} for t in c.read_task_runs()]
print(json.dumps({"flow_runs": flow_runs, "task_runs": task_runs}))
"""


def prefect_runs(env: dict) -> dict:
    """The flow runs (by id) and task runs in the Prefect API that `env` points at, read by another process."""
    p = subprocess.run(
        [sys.executable, "-c", READ_RUNS], env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-3000:]
    found = json.loads(p.stdout.strip().splitlines()[-1])
    return {"flow_runs": {r["id"]: r for r in found["flow_runs"]}, "task_runs": found["task_runs"]}


def wait_for(what: str, ok, timeout_s: float, proc: subprocess.Popen | None = None, every_s: float = 0.2):
    deadline = time.time() + timeout_s
    while not (found := ok()):
        assert proc is None or proc.poll() is None, f"exited ({proc.returncode}) before {what}"
        assert time.time() < deadline, f"no {what} in {timeout_s:.0f} s"
        time.sleep(every_s)
    return found


def statuses(out: Path) -> dict[str, str | None]:
    runs = {}
    for d in (out / "runs").glob("*"):
        try:
            runs[d.name] = json.loads((d / "status.json").read_text())["status"]
        except (OSError, ValueError, KeyError):
            runs[d.name] = None
    return runs


def checkpointed(out: Path) -> dict[str, int]:
    """Run id -> the step of its last complete checkpoint."""
    done: dict[str, int] = {}
    for p in out.glob("runs/*/ckpt/step*/COMPLETE"):
        run, step = p.parents[2].name, int(p.parent.name[4:])
        done[run] = max(step, done.get(run, 0))
    return done


def one_done_one_interrupted(out: Path) -> tuple[str, str] | None:
    """(a completed run, a run with a checkpoint that is training still), once there are both."""
    status, ckpt = statuses(out), checkpointed(out)
    done = [r for r, s in status.items() if s == "completed"]
    going = [r for r in ckpt if status.get(r) is None]
    return (done[0], going[0]) if done and going else None


class Left:
    """What a killed sweep left: a finished run (its log and curve, which a re-run must not touch) and an
    interrupted one (the step of its last checkpoint, which a re-run resumes from)."""

    def __init__(self, out: Path, finished: str, interrupted: str):
        assert statuses(out)[interrupted] is None  # killed mid-run, not finished
        self.finished, self.interrupted = out / "runs" / finished, out / "runs" / interrupted
        self.finished_log = (self.finished / "train.log").read_text()
        self.finished_curve = self._curve()
        self.resume_at = checkpointed(out)[interrupted]

    def _curve(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (self.finished / "curve").iterdir()}

    def check_rerun(self, sweep_dir: Path) -> None:
        """The re-run skipped the finished run and resumed the interrupted one: each step once."""
        assert (self.finished / "train.log").read_text() == self.finished_log
        assert self._curve() == self.finished_curve
        log = (self.interrupted / "train.log").read_text()
        assert log.count("rank(s) on") == 2 and f"resumed from step{self.resume_at}" in log, log
        runs = pq.read_table(sweep_dir / "runs.parquet").to_pandas().set_index("run_id")
        assert set(runs.status) == {"completed"}
        curves = pq.read_table(sweep_dir / "curves.parquet").to_pandas()
        assert not curves.duplicated(["run_id", "step"]).any()
        steps = int(runs.steps[self.interrupted.name])
        expected = sorted(set(range(5, steps + 1, 5)) | {steps})
        assert list(curves[curves.run_id == self.interrupted.name].sort_values("step").step) == expected


def unfinished(runs: dict) -> list[dict]:
    """The flow runs and task runs that Prefect shows Running or Pending."""
    live = ("RUNNING", "PENDING")
    return [r for r in runs["flow_runs"].values() if r["state"] in live] + [
        t for t in runs["task_runs"] if t["state"] in live
    ]


def leftover_prefect_servers(prefect_home: Path) -> list[int]:
    """Prefect's temporary API servers started for `prefect_home` that are still running."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            cmd, env = (d / "cmdline").read_bytes(), (d / "environ").read_bytes()
        except OSError:
            continue
        if b"uvicorn" in cmd and f"PREFECT_HOME={prefect_home}".encode() in env.split(b"\0"):
            pids.append(int(d.name))
    return pids


def test_a_record_tells_a_live_process_from_a_dead_a_reused_and_a_remote_one():
    me = FlowRunRecord.of_this_process("f", "api", None)
    assert FlowRunRecord.from_dict(json.loads(json.dumps(me.to_dict()))) == me
    assert is_gone(me) is False
    child = subprocess.Popen(["sleep", "0"])
    wait_for("the child's end", lambda: process_start(child.pid) is None, 10)  # a zombie counts as gone
    assert is_gone(FlowRunRecord.from_dict({**me.to_dict(), "pid": child.pid})) is True
    child.wait()
    assert is_gone(FlowRunRecord.from_dict({**me.to_dict(), "pid": child.pid})) is True
    assert is_gone(FlowRunRecord.from_dict({**me.to_dict(), "pid_start": me.pid_start + 1})) is True  # pid reused
    assert is_gone(FlowRunRecord.from_dict({**me.to_dict(), "boot_id": "another boot"})) is True
    assert is_gone(FlowRunRecord.from_dict({**me.to_dict(), "host": "elsewhere"})) is None


PARENT = """
import subprocess, sys, time
from tasks.flow_runs import start_child_reaper
reaper = start_child_reaper()
child = subprocess.Popen(["sleep", "300"], start_new_session=True)
print(reaper.pid, child.pid, flush=True)
time.sleep(300)
"""


def test_the_children_of_a_killed_process_are_ended_by_its_reaper():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    reaper, child = map(int, parent.stdout.readline().split())
    try:
        time.sleep(1.5)  # the reaper has seen the child
        assert process_start(child) is not None  # the negative control
        parent.kill()
        parent.wait()
        wait_for("the orphan's end", lambda: process_start(child) is None, 10)
        wait_for("the reaper's end", lambda: process_start(reaper) is None, 10)
    finally:
        for pid in (child, reaper):
            if process_start(pid) is not None:
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.fault("flow_kill", quick=True)
def test_a_killed_flow_process_is_crashed_by_the_rerun_which_finishes_only_what_is_left(tmp_path, prefect_env, fired):
    sweep = tiny_sweep(
        tmp_path,
        sizes="[t1]",
        lrs="[3.0e-3, 1.0e-3]",
        multipliers="[3.0]",
        checkpoint_interval=10,
        eval_interval=10,
        concurrency=1,
    )
    out = tmp_path / "out"
    sweep_dir = out / "sweeps" / "tiny"
    home = Path(prefect_env["PREFECT_HOME"])
    exe = Path(sys.executable).with_name("scaling")
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [str(exe), "run", str(sweep), "--output", str(out)],
            cwd=ROOT,
            env={**os.environ, **prefect_env},
            stdout=log,  # a file, not a pipe: Prefect's temporary server would hold a pipe open
            stderr=subprocess.STDOUT,
        )
    try:
        both = wait_for("a completed run and a checkpointed one", lambda: one_done_one_interrupted(out), 240, proc)
        # The negative control: a training process and Prefect's temporary server to orphan, just before the kill.
        assert trainers_of(out) and leftover_prefect_servers(home)
        os.kill(proc.pid, signal.SIGKILL)  # the fault: the flow process dies, with no chance to report it
        proc.wait(timeout=10)
        fired(proc.returncode == -signal.SIGKILL, f"SIGKILL of the flow process {proc.pid}")
        t0 = time.time()
        wait_for("end of the orphaned training processes", lambda: not trainers_of(out), 10)
        orphaned_s = time.time() - t0
        wait_for("end of the temporary Prefect server", lambda: not leftover_prefect_servers(home), 15)
        server_s = time.time() - t0
        left = Left(out, *both)

        # The fault's effect: Prefect still shows the killed flow run Running, and the sweep's folder names it.
        (record,) = [json.loads(p.read_text()) for p in (sweep_dir / "flow-runs").glob("*.json")]
        assert record["pid"] == proc.pid and record["host"] == socket.gethostname()
        killed = record["flow_run_id"]
        assert prefect_runs(prefect_env)["flow_runs"][killed]["state"] == "RUNNING"

        rerun = scaling("run", sweep, "--output", out, env=prefect_env)
        after = prefect_runs(prefect_env)
        crashed = after["flow_runs"][killed]
        assert crashed["state"] == "CRASHED", crashed
        assert crashed["message"] == f"flow process {proc.pid} on host {socket.gethostname()} is gone"
        assert not unfinished(after)
        sweeps = [r for r in after["flow_runs"].values() if r["flow"] == "scaling-sweep"]
        assert sorted(r["state"] for r in sweeps) == ["COMPLETED", "CRASHED"]
        assert not list((sweep_dir / "flow-runs").glob("*.json"))  # the re-run's record went with it
        said = f"was Running, but flow process {proc.pid} on host {socket.gethostname()} is gone: set it Crashed"
        assert said in rerun.stdout + rerun.stderr
        left.check_rerun(sweep_dir)
        print(f"training gone {orphaned_s:.1f} s and the temporary server {server_s:.1f} s after the kill")
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in trainers_of(out) + leftover_prefect_servers(home):  # only after a failure
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def worker_server(tmp_path):
    """A Prefect server, the deployments, and a process worker (as tests/flows/test_deployment.py starts them):
    yields the environment that reaches them, a `prefect` CLI, the worker's process and a way to start another."""
    port = free_port()
    env = {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "SCALING_OUTPUT": str(tmp_path / "out"),
    }
    exe = str(Path(sys.executable).with_name("prefect"))

    def prefect(*args):
        p = subprocess.run(
            [exe, *args], env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        assert p.returncode == 0, f"prefect {' '.join(args)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p

    def start(*args, log=subprocess.DEVNULL):
        return subprocess.Popen(
            [exe, *args],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    procs = [start("server", "start", "--host", "127.0.0.1", "--port", str(port))]
    try:
        wait_for("Prefect server", lambda: _healthy(port), 120, procs[0], every_s=1)
        prefect("work-pool", "create", "local", "--type", "process")
        # scaling-point/kubernetes deploys onto the Kubernetes pool, which must exist (no pod runs here).
        template = "deployments/kubernetes/base-job-template.json"
        prefect("work-pool", "create", "gpu", "--type", "kubernetes", "--base-job-template", template)
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")

        def start_worker() -> subprocess.Popen:
            with open(tmp_path / f"worker-{len(procs)}.log", "w") as log:
                procs.append(start("worker", "start", "--pool", "local", log=log))
            return procs[-1]

        yield SimpleNamespace(env=env, prefect=prefect, worker=start_worker(), start_worker=start_worker)
    finally:
        stop_groups(procs)


def _healthy(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.fault("flow_kill")
def test_a_killed_worker_leaves_its_flow_run_crashed_and_a_rerun_finishes_only_what_is_left(worker_server, fired):
    env, prefect, worker = worker_server.env, worker_server.prefect, worker_server.worker
    out = Path(env["SCALING_OUTPUT"])
    sweep_dir = out / "sweeps" / "sample"
    overrides = dict(
        TINY,
        **{
            "sizes": ["t1"],
            "lr.values": [3.0e-3, 1.0e-3],
            "tokens.multipliers": [3.0],
            "train.eval_interval": 10,
            "train.checkpoint_interval": 10,
            "resources.concurrency": 1,
        },
    )
    params = f"overrides={json.dumps(overrides)}"
    flow_run = flow_run_id(prefect("deployment", "run", "scaling-sweep/sample", "--param", params).stdout)
    records = wait_for("the flow run's record", lambda: list((sweep_dir / "flow-runs").glob("*.json")), 120, worker)
    record = json.loads(records[0].read_text())
    assert record["flow_run_id"] == flow_run and record["worker_pid"] == worker.pid
    assert prefect_runs(env)["flow_runs"][flow_run]["state"] == "RUNNING"
    flow_process = record["pid"]
    both = wait_for("a completed run and a checkpointed one", lambda: one_done_one_interrupted(out), 300, worker)
    # The negative control: the flow run's process and a training process live, just before the kill.
    assert process_start(flow_process) is not None and trainers_of(out)
    os.kill(worker.pid, signal.SIGKILL)  # the fault: the worker dies; its flow run's process has a session of its own
    worker.wait(timeout=10)
    fired(worker.returncode == -signal.SIGKILL, f"SIGKILL of the worker {worker.pid}")
    t0 = time.time()
    wait_for("end of the flow process", lambda: process_start(flow_process) is None, 30)
    wait_for("end of the training processes", lambda: not trainers_of(out), 10)
    ended_s = time.time() - t0
    left = Left(out, *both)

    runs = prefect_runs(env)
    crashed = runs["flow_runs"][flow_run]
    assert crashed["state"] == "CRASHED", crashed
    assert crashed["message"].startswith(f"worker process {worker.pid} on host {socket.gethostname()} is gone")
    assert not unfinished(runs)
    assert not list((sweep_dir / "flow-runs").glob("*.json"))

    # A new worker, the deployment run again (its concurrency slot is free): it trains only what was left.
    worker_server.start_worker()
    t0 = time.time()
    rerun = prefect("deployment", "run", "scaling-sweep/sample", "--param", params, "--watch", "--watch-timeout", "300")
    assert "Completed" in rerun.stdout, rerun.stdout[-3000:]
    left.check_rerun(sweep_dir)
    assert not unfinished(prefect_runs(env))
    print(
        f"flow process and training gone {ended_s:.1f} s after the worker was killed; re-run {time.time() - t0:.0f} s"
    )
