"""`prefect deployment run scaling-sweep/...` against a real Prefect server and process worker."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.layout import RunDir, complete_checkpoints
from tasks.track.curves import read_curve
from tasks.train.resume import damage
from tests.conftest import ROOT
from tests.flows.test_resume import trainers_of

TINY = {
    "data.tokenizer": "bpe:320",
    "data.seq_len": 32,
    "data.val_tokens": 4096,
    "data.sample_bytes": 400000,
    "sizes": ["t1", "t2"],
    "tokens.per_param": 1,
    "tokens.multipliers": [0.5],
    "lr.values": [3.0e-3],
    "train.batch_tokens": 1024,
    "train.eval_interval": 20,
    "resources.threads_per_rank": 1,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server, the shipped deployments and a process worker, shared by this module's tests."""
    tmp_path = tmp_path_factory.mktemp("deployment")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "SCALING_OUTPUT": str(tmp_path / "out"),
    }
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "Prefect server did not start"
                time.sleep(1)

        def prefect(*args, check=True, timeout=600):
            p = subprocess.run(
                [str(bin_dir / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
            )
            if check and p.returncode:
                pytest.fail(f"prefect {' '.join(args)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
            return p

        prefect("work-pool", "create", "local", "--type", "process")
        # The Kubernetes pool of scaling-point/kubernetes, made from the shipped template as a user makes it
        # (the server checks the template); nothing here runs its pods.
        template = "deployments/kubernetes/base-job-template.json"
        prefect("work-pool", "create", "gpu", "--type", "kubernetes", "--base-job-template", template)
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        procs.append(
            subprocess.Popen(
                [str(bin_dir / "prefect"), "worker", "start", "--pool", "local"],
                env=env,
                cwd=ROOT,
                stdout=open(tmp_path / "worker.log", "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        yield prefect, tmp_path / "out"
    finally:
        stop_groups(procs)


def stop_groups(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group (one gone already is fine), then SIGKILL any still there after 30 s."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def flow_run_id(output: str) -> str:
    return re.search(r"UUID:\s*([0-9a-f-]{36})", output).group(1)


@pytest.mark.slow
def test_deployments_sample_runs_and_pile_fails_fast(server):
    prefect, out = server
    run = prefect(
        "deployment",
        "run",
        "scaling-sweep/sample",
        "--param",
        f"overrides={json.dumps(TINY)}",
        "--watch",
        "--watch-timeout",
        "600",
    )
    assert "Completed" in run.stdout, run.stdout[-3000:]
    runs = pq.read_table(out / "sweeps" / "sample" / "runs.parquet").to_pandas()
    assert len(runs) == 2 and set(runs.status) == {"completed"}
    assert (out / "sweeps" / "sample" / "report" / "report.html").is_file()
    artifacts = {a["key"]: a for a in json.loads(prefect("artifact", "ls", "--output", "json").stdout)}
    assert {"sweep-sample", "sweep-sample-runs"} <= set(artifacts)
    assert "2 completed" in artifacts["sweep-sample"]["data"]

    t0 = time.time()
    pile = prefect("deployment", "run", "scaling-sweep/pile", "--watch", "--watch-timeout", "300", check=False)
    assert pile.returncode != 0 and time.time() - t0 < 120
    logs = prefect("flow-run", "logs", flow_run_id(pile.stdout)).stdout
    assert "/data/pile" in logs and "data.path" in logs


@pytest.mark.slow
@pytest.mark.fault("cancel", quick=True)
def test_cancelling_a_flow_run_during_training_ends_every_training_process(server, fired):
    prefect, out = server
    long = dict(TINY, **{"sizes": ["t3"], "tokens.per_param": 20, "tokens.multipliers": [1.0]})
    started = prefect("deployment", "run", "scaling-sweep/sample", "--param", f"overrides={json.dumps(long)}")
    deadline = time.time() + 300
    while not trainers_of(out):
        assert time.time() < deadline, "training never started"
        time.sleep(0.5)
    training = trainers_of(out)
    cancel = prefect("flow-run", "cancel", flow_run_id(started.stdout))
    fired(cancel.returncode == 0 and training, f"cancelled the flow run while {training} trained")
    deadline = time.time() + 120
    while trainers_of(out):
        assert time.time() < deadline, f"training processes outlived the cancelled flow run: {trainers_of(out)}"
        time.sleep(1)
    # What the cancelled run leaves is safe to resume from: each sealed checkpoint matches its manifest
    # (an unsealed one is never loaded), and its curve reads whole, nothing half-written in view.
    [cancelled] = [run for run in (RunDir(p.parent) for p in out.glob("runs/*/spec.json")) if run.status() is None]
    assert all(damage(ckpt) is None for ckpt in complete_checkpoints(cancelled.ckpt))
    steps = read_curve(cancelled.curve).column("step").to_pylist()
    assert steps == sorted(set(steps))


@pytest.mark.slow
def test_the_kubernetes_executor_fans_out_a_deployment_run_per_run_and_waits_for_them(server, tmp_path):
    prefect, _ = server
    out = tmp_path / "fan-out"
    fan_out = {
        **TINY,
        "resources.executor": "kubernetes",
        # The same fan-out, onto the process pool's scaling-point deployment: no cluster here.
        "cluster.kubernetes.deployment": "scaling-point/local",
        "cluster.kubernetes.gpus_per_rank": 0,
        "cluster.kubernetes.poll_s": 1,
    }
    args = ["scaling-sweep/sample", "--param", f"overrides={json.dumps(fan_out)}", "--param", f"output={out}"]
    run = prefect("deployment", "run", *args, "--watch", "--watch-timeout", "600")
    assert "Completed" in run.stdout, run.stdout[-3000:]
    runs = pq.read_table(out / "sweeps" / "sample" / "runs.parquet").to_pandas()
    assert len(runs) == 2 and set(runs.status) == {"completed"}
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/kubernetes.json")}
    assert len(records) == 2 and {r["attempt"] for r in records.values()} == {1}
    for record in records.values():  # each a scaling-point flow run of its own, linked to the sweep's
        child = prefect("flow-run", "inspect", record["flow_run_id"]).stdout
        assert "COMPLETED" in child and "parent_task_run_id=UUID(" in child, child[-2000:]
    # Invoked again: every run is finished, so no pod is started.
    again = prefect("deployment", "run", *args, "--watch", "--watch-timeout", "600")
    assert "Completed" in again.stdout
    assert {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/kubernetes.json")} == records
