"""The executors benchmark: its cut of the sample sweep, and one point timed on local, Slurm and Ray against
the tests' engines (tests.tasks.cluster.engines), each row read back from its table."""

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.bench.executors import overrides, parser
from tasks.config import load_sweep, parse_overrides, resolve_sweep_path
from tasks.plan import plan_sweep
from tests.conftest import ROOT
from tests.tasks.bench.support import RATIO, TINY_SETS, table
from tests.tasks.cluster import netns
from tests.tasks.cluster.ray_cluster import ray_missing
from tests.tasks.cluster.slurm_cluster import slurm_missing


def test_the_cut_sample_sweep_has_a_point_per_size_trained_one_at_a_time_with_the_users_sets_last():
    args = parser().parse_args(["--points", "3", "--set", "lr.values=[1.0e-3]"])
    cfg = load_sweep(resolve_sweep_path("sample"), parse_overrides(overrides(args)))
    specs = plan_sweep(cfg).runs
    assert [s.size for s in specs] == ["t1", "t2", "t3"] and {s.lr for s in specs} == {1e-3}
    assert cfg.resources.concurrency == 1 and cfg.resources.executor == "local"


@pytest.mark.slow
def test_the_benchmark_times_a_point_on_local_slurm_and_ray():
    netns.required("Slurm and Ray", slurm_missing() or ray_missing())
    bench = [str(Path(sys.executable).with_name("scaling")), "bench", "executors", "--points", "1", *TINY_SETS]
    bench += ["--set", "cluster.slurm.poll_s=1"]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.tasks.cluster.engines", *bench],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = table(proc.stdout, "the sweep's wall time")
    assert list(rows) == ["local", "slurm", "ray"]  # the baseline first
    assert rows["local"]["per point s"] == "+0.0" and rows["local"]["vs local"] == "1.00x"
    for row in rows.values():
        assert float(row["wall s"]) > float(row["training s"]) > 0 and RATIO.fullmatch(row["vs local"]), row
