"""tasks.steps: a node's GPUs counted in Prefect's global concurrency limit while runs hold them."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Three 2-rank runs on a simulated 4-GPU node, as the flow's thread pool runs them: each holds its GPUs
# for 4 s and reads, while it holds them, how many of the node's slots Prefect counts taken.
HOLD = """
import json, socket, threading, time
from types import SimpleNamespace
from prefect import flow, task, get_client
from prefect.task_runners import ThreadPoolTaskRunner
from tasks import steps
from tasks.train import devices

NODE = ["0", "1", "2", "3"]
devices.visible_gpus = lambda: NODE

@task
def hold(i):
    spec = SimpleNamespace(name=f"run{i}", ranks_per_node=2)
    with steps.gpus_held(spec, NODE) as group:
        t0, taken = time.time(), []
        with get_client(sync_client=True) as c:
            while time.time() < t0 + 4:
                taken.append(c.read_global_concurrency_limit_by_name(steps.gpu_limit()).active_slots)
                time.sleep(0.25)
        return {"group": list(group), "start": t0, "end": time.time(), "taken": taken}

@flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
def grid():
    steps.ensure_gpu_limit()
    steps.ensure_gpu_limit()  # a second flow run on the node finds it made
    return [f.result() for f in [hold.submit(i) for i in range(3)]]

held = grid()
with get_client(sync_client=True) as c:
    limit = c.read_global_concurrency_limit_by_name(steps.gpu_limit())
print(json.dumps({"held": held, "limit": limit.limit, "after": limit.active_slots}))
"""


@pytest.mark.slow
def test_runs_hold_the_node_s_gpus_in_prefect_s_concurrency_limit(prefect_env, tmp_path):
    env = {**prefect_env, "SCALING_GPU_LOCKS": str(tmp_path / "locks"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    p = subprocess.run(
        [sys.executable, "-c", HOLD], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-3000:]
    found = json.loads(p.stdout.strip().splitlines()[-1])
    held = sorted(found["held"], key=lambda h: h["start"])
    assert found["limit"] == 4 and found["after"] == 0  # one slot per GPU, all given back
    first, second, third = held
    assert {tuple(first["group"]), tuple(second["group"])} == {("0", "1"), ("2", "3")}
    taken = [n for h in held for n in h["taken"]]
    assert max(taken) == 4 and min(taken) >= 2  # each run's 2 slots, two runs' 4, never more than the node's
    assert third["start"] >= min(first["end"], second["end"]) - 0.2  # the third waited for GPUs
