"""Tracking at cluster scale: MLflow's real tracking server on a PostgreSQL store (Debian's, started here on a
loopback port in a temporary data folder), trainers logging to it over HTTP, and a sweep whose `tracking.uri`
names it."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, scaling, tiny_sweep
from tests.tasks.track.test_mlflow_outage import wait_healthy

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with an `mlflow` database; yields its SQLAlchemy URI."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        if os.environ.get("SCALING_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required here (SCALING_REQUIRE_POSTGRES) but initdb is not installed")
        pytest.skip("PostgreSQL not installed (make postgres)")
    # PostgreSQL refuses to run as root: as root, its files belong to the `postgres` user the package made.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="scaling-pg-"))
    if as_user:
        shutil.chown(home, "postgres")
    data, port = home / "data", free_port()

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*as_user, str(bin_dir / tool), *args], check=True, capture_output=True, timeout=120)

    pg("initdb", "-D", str(data), "--auth=trust", "--username=mlflow", "--no-sync")
    pg("pg_ctl", "start", "-w", "-D", str(data), "-l", str(home / "log"), "-o", f"-h 127.0.0.1 -p {port} -k {home}")
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=mlflow dbname=postgres", autocommit=True) as db:
            db.execute("CREATE DATABASE mlflow")
        yield f"postgresql+psycopg://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """MLflow's tracking server on the PostgreSQL store, proxying artifacts; yields its http:// URI."""
    tmp = tmp_path_factory.mktemp("mlflow-pg")
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    store = ["--backend-store-uri", postgres, "--artifacts-destination", str(tmp / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen([*argv, *store], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, tmp / "server.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# n trainers, forked after one import of the sender, each send a run's curve the way a training process does
# (tasks.track.mlflow_store.MetricSender, from a background thread), released at once.
TRAINERS = """
import json, os, sys, time
from tasks.track.mlflow_store import MetricSender, mlflow_client
uri, n, batches, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
client = mlflow_client(uri)
exp = client.create_experiment("trainers")
runs = [client.create_run(exp).info.run_id for _ in range(n)]
go, ready = os.pipe()
children = []
for run_id in runs:
    out, out_w = os.pipe()
    if (pid := os.fork()) == 0:
        os.close(ready)
        os.read(go, 1)
        sender, t0 = MetricSender(uri, run_id), time.monotonic()
        for b in range(batches):
            steps = range(b * rows + 1, (b + 1) * rows + 1)
            sender.send([{"step": s, "tokens_seen": 1000 * s, "timestamp_ms": 1_000_000 + s, "train_loss": 4.0 / s,
                          "val_loss": 4.1 / s, "lr_now": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1e5,
                          "flops": 1e9 * s} for s in steps])
        sent = sender.close(timeout_s=600)
        os.write(out_w, json.dumps({"run": run_id, "sent": sent, "failures": sender.failures,
                                    "s_per_call": (time.monotonic() - t0) / batches}).encode())
        os._exit(0)
    os.close(out_w)
    children.append((pid, out))
os.close(ready)
done = []
for pid, out in children:
    with os.fdopen(out, "rb") as f:
        done.append(json.loads(f.read()))
    os.waitpid(pid, 0)
print(json.dumps(done))
"""


def test_sixteen_trainers_log_over_http_to_a_postgresql_backed_server_without_a_failed_call(server):
    n, batches, rows = 16, 10, 50
    p = subprocess.run(
        [sys.executable, "-c", TRAINERS, server, str(n), str(batches), str(rows)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    done = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(done) == n and all(d["sent"] and d["failures"] == 0 for d in done), done
    client = MlflowClient(tracking_uri=server)
    counts = {d["run"]: len(client.get_metric_history(d["run"], "train_loss")) for d in done}
    assert set(counts.values()) == {batches * rows}, counts  # every row of every trainer, once
    per_call = sorted(d["s_per_call"] for d in done)
    print(f"{n} trainers x {batches} calls: {per_call[n // 2]:.2f} s median, {per_call[-1]:.2f} s max per call")


def test_a_sweep_tracks_to_the_server_its_sweep_file_names(server, tmp_path, prefect_env, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    sweep = tiny_sweep(tmp_path, sizes="[t1]", name="on-server")
    scaling("run", sweep, "--output", out, "--set", f"tracking.uri={server}", env=prefect_env)
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()
    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("on-server")
    children = client.search_runs([exp.experiment_id], "tags.kind = 'run'")
    curves = pq.read_table(out / "sweeps" / "on-server" / "curves.parquet").to_pandas()
    assert len(children) == 1 and len(curves) > 0
    history = client.get_metric_history(children[0].info.run_id, "train_loss")
    assert sorted(m.step for m in history) == sorted(curves.step)  # MLflow's rows are Parquet's
    [parent] = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")
    assert "sweep.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}  # through the server's proxy
