"""tasks.track.mlflow_store: a fresh SQLite store opened by many processes at once."""

import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

FIRST_RUN = """
import sys, time
from mlflow.tracking import MlflowClient
from tasks.track.mlflow_store import mlflow_client
uri, start, i, locked = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
while time.time() < start:  # every process imported, then all at once
    time.sleep(0.01)
client = mlflow_client(uri) if locked else MlflowClient(tracking_uri=uri)
run = client.create_run(client.create_experiment(f"sweep-{i}"))
client.log_metric(run.info.run_id, "val_loss", 1.0)
"""


def first_runs(tmp_path, n: int, locked: bool) -> list[str]:
    """The stderr of each of n processes that open the same fresh store at once and log a run."""
    uri = f"sqlite:///{tmp_path / ('locked' if locked else 'bare') / 'mlflow.db'}"
    (tmp_path / ("locked" if locked else "bare")).mkdir()
    start = time.time() + 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_RUN, uri, str(start), str(i), "1" if locked else "0"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    return [p.communicate(timeout=300)[1] if p.wait(timeout=300) else "" for p in procs]


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
