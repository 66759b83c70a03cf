"""tasks.cluster.executors on Ray: a tiny sweep from `scaling run` to its report, each run a Ray task that
reserves its GPU and CPU on a local Ray instance (ray_cluster) and trains there by the local rules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config import load_sweep
from tasks.layout import Layout
from tasks.plan import plan_sweep
from tests.conftest import ROOT, scaling, tiny_sweep


@pytest.mark.slow
def test_a_sweep_trains_on_ray_to_its_report_each_run_on_its_own_gpu(ray, tmp_path):
    sweep, out = tiny_sweep(tmp_path), tmp_path / "out"
    exe = Path(sys.executable).with_name("scaling")
    sets = ["resources.executor=ray", f"cluster.ray.address={ray.address}", "cluster.ray.cpus_per_rank=1"]
    cmd = ray.command(exe, "run", sweep, "--output", out, *[a for s in sets for a in ("--set", s)])
    proc = subprocess.run(cmd, cwd=ROOT, env=ray.env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    assert re.search(r"sweep finished in \d+ s: 2 completed", proc.stdout), proc.stdout[-3000:]
    assert Path(re.search(r"report: (\S+)", proc.stdout).group(1)).is_file()
    runs = [Layout.at(out).run(s.run_id) for s in plan_sweep(load_sweep(sweep)).runs]
    gpus = [re.search(r"ray task on \S+, GPUs (\S+)", r.log.read_text()) for r in runs]
    assert all(gpus) and {g.group(1) for g in gpus} <= {"0", "1"}, [r.log.read_text()[-1500:] for r in runs]
    # Planned again on this machine: both are recognised as finished, and nothing trains.
    logs = [r.log.read_text() for r in runs]
    assert "2 completed" in scaling("run", sweep, "--output", out).stdout
    assert [r.log.read_text() for r in runs] == logs
