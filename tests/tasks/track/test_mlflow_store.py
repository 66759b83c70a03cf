"""tasks.track.mlflow_store: a fresh SQLite store opened by many processes at once."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

FIRST_RUNS = """
import json, os, sys, traceback
from mlflow.tracking import MlflowClient
from tasks.track.mlflow_store import mlflow_client
uri, n, locked = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
go, ready = os.pipe()
children = []
for i in range(n):  # n processes with mlflow imported once, forked before anyone touches the store
    err, err_w = os.pipe()
    if (pid := os.fork()) == 0:
        os.close(ready)
        os.read(go, 1)  # every child waits here until the parent closes the pipe: then all at once
        try:
            client = mlflow_client(uri) if locked else MlflowClient(tracking_uri=uri)
            run = client.create_run(client.create_experiment(f"sweep-{i}"))
            client.log_metric(run.info.run_id, "val_loss", 1.0)
            code = 0
        except BaseException:
            os.write(err_w, traceback.format_exc()[-8000:].encode())
            code = 1
        os._exit(code)
    os.close(err_w)
    children.append((pid, err))
os.close(ready)
errors = []
for pid, err in children:
    with os.fdopen(err, "rb") as f:
        said = f.read().decode()
    errors.append(said if os.waitpid(pid, 0)[1] else "")
print(json.dumps(errors))
"""


def first_runs(tmp_path, n: int, locked: bool) -> list[str]:
    """The error of each of n processes that open the same fresh store at once and log a run ('' if none)."""
    folder = tmp_path / ("locked" if locked else "bare")
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    p = subprocess.run(
        [sys.executable, "-c", FIRST_RUNS, uri, str(n), "1" if locked else "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.fault("sqlite", quick=True)
def test_eight_first_runs_on_a_fresh_store_all_land(tmp_path, fired):
    failures = [e for e in first_runs(tmp_path, 8, locked=True) if e]
    assert failures == []
    # The negative control: opened without the lock, the first writers race to create and migrate the
    # schema (`table ... already exists`, `duplicate column`), and some of them fail.
    raced = [e for e in first_runs(tmp_path, 8, locked=False) if e]
    fired(raced, f"without the lock, {len(raced)} of 8 first writers failed")
    assert raced and all("sqlalchemy" in e.lower() or "sqlalche.me" in e for e in raced), raced
