"""tasks.train.devices: a node's GPUs cut into runs' groups, claimed disjointly, and each rank bound to its own
GPU before anything touches one. No GPU here: the node is simulated by its list of GPU names, and the
accelerator by patching torch.cuda in a training process's setup."""

import json
import subprocess
import sys
import threading
import time

import pytest

from tasks.config import ConfigError, ResourcesConfig
from tasks.train import devices
from tests.conftest import ROOT, tiny_sweep

NODE = [str(i) for i in range(8)]


def test_an_8_gpu_node_is_cut_into_groups_of_its_ranks():
    table = {ranks: devices.groups(NODE, ranks) for ranks in (1, 2, 4)}
    assert table[1] == [(g,) for g in NODE]
    assert table[2] == [("0", "1"), ("2", "3"), ("4", "5"), ("6", "7")]
    assert table[4] == [("0", "1", "2", "3"), ("4", "5", "6", "7")]
    assert devices.groups(NODE[:7], 2)[-1] == ("4", "5")  # the 7th GPU is short of a group
    at_once = {r: devices.runs_at_once(ResourcesConfig(ranks_per_run=r), NODE) for r in (1, 2, 4)}
    assert at_once == {1: 8, 2: 4, 4: 2}
    assert devices.runs_at_once(ResourcesConfig(ranks_per_run=4, concurrency=1), NODE) == 1
    assert devices.runs_at_once(ResourcesConfig(ranks_per_run=2), []) == 1  # a CPU


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_concurrent_runs_never_share_a_gpu(tmp_path, ranks, monkeypatch):
    monkeypatch.setattr(devices, "POLL_S", 0.01)
    held: list[tuple[str, ...]] = []
    seen: list[list[tuple[str, ...]]] = []  # what was held at once, at each claim
    waited = []
    lock = threading.Lock()

    def run(i: int) -> None:
        with devices.claim(NODE, ranks, on_wait=lambda: waited.append(i), locks=tmp_path) as group:
            with lock:
                held.append(group)
                seen.append(list(held))
            time.sleep(0.05)
            with lock:
                held.remove(group)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3 * len(NODE) // ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(seen) == len(threads)  # every run got its GPUs in the end
    for at_once in seen:
        gpus = [g for group in at_once for g in group]
        assert len(gpus) == len(set(gpus)), at_once
        assert all(len(group) == ranks and group in devices.groups(NODE, ranks) for group in at_once)
    assert max(map(len, seen)) == len(NODE) // ranks  # the node full at some point
    assert waited  # three times as many runs as fit: some waited


def test_a_group_another_process_holds_is_passed_over(tmp_path):
    hold = (
        "import sys, time\nfrom tasks.train import devices\nfrom pathlib import Path\n"
        "with devices.claim([str(i) for i in range(8)], 2, locks=Path(sys.argv[1])) as g:\n"
        "    print(','.join(g), flush=True)\n    time.sleep(60)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "0,1"
        with devices.claim(NODE, 2, locks=tmp_path) as group:
            assert group == ("2", "3")
        # The negative control: lock files in another folder know nothing of the other process's claim.
        with devices.claim(NODE, 2, locks=tmp_path / "elsewhere") as group:
            assert group == ("0", "1")
    finally:
        other.kill()
        other.wait()
    with devices.claim(NODE, 2, locks=tmp_path) as group:  # its lock ended with it
        assert group == ("0", "1")


def test_the_gpus_a_node_offers_its_runs(monkeypatch):
    assert devices.node_gpus(None, NODE) == NODE
    assert devices.node_gpus([6, 7], NODE) == ["6", "7"]
    scheduled = ["GPU-3f1c", "GPU-9ab2"]  # what a scheduler's CUDA_VISIBLE_DEVICES lists: handed on as it is
    assert devices.node_gpus([1], scheduled) == ["GPU-9ab2"]
    with pytest.raises(ConfigError, match=r"resources.gpus: \[8\] not among this node's 8 visible GPU\(s\)"):
        devices.node_gpus([0, 8], NODE)
    with pytest.raises(ConfigError, match="this node has no GPU visible"):
        devices.node_gpus([0], [])
    with pytest.raises(ValueError, match="ranks_per_run = 4: this node's runs have 2 GPU"):
        with devices.claim(NODE[:2], 4):
            pass

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert devices.visible_gpus() == ["4", "6"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.visible_gpus() == ["0", "1"]


# A training process's setup with torch.cuda made to report 4 GPUs; every call that could touch a device
# is recorded in order. The engine itself stays on the CPU (DS_ACCELERATOR=cpu).
SETUP = """
import json, os, sys
from pathlib import Path
import torch
from tasks.layout import RunDir
from tasks.train import setup

calls = []
def record(name, real):
    def wrapped(*a, **k):
        if len(calls) < 100:  # the first ones are what matters; names only: a tensor's str calls .to itself
            calls.append([name])
        return real(*a, **k)
    return wrapped

torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 4
torch.cuda.set_device = lambda i: calls.append(["set_device", str(i)])
torch.cuda.is_bf16_supported = lambda *a, **k: True
torch.distributed.TCPStore = record("TCPStore", torch.distributed.TCPStore)
torch.distributed.init_process_group = record("init_process_group", torch.distributed.init_process_group)
torch.nn.Module.to = record("Module.to", torch.nn.Module.to)
torch.Tensor.to = record("Tensor.to", torch.Tensor.to)
torch.manual_seed = record("manual_seed", torch.manual_seed)
if sys.argv[3] == "old_order":  # how setup ran before: the process group first, the device after
    real_set, real_join = setup.devices.set_rank_device, setup._distributed
    launch = json.loads(Path(sys.argv[2]).read_text())
    setup.devices.set_rank_device = lambda rank: [real_join(launch), real_set(rank)][1]
    setup._distributed = lambda launch: (0, 1)
session = setup.start(RunDir(Path(sys.argv[1])), Path(sys.argv[2]))
print(json.dumps({"calls": calls, "device": session.device}))
"""


def setup_calls(tmp_path, order: str) -> dict:
    from tasks.config import load_sweep
    from tasks.data import prepare_data
    from tasks.layout import RunDir
    from tasks.plan import plan_sweep
    from tasks.train.launch import _store_socket, environment

    cfg = load_sweep(tiny_sweep(tmp_path, sizes="[t1]"))
    spec = plan_sweep(cfg).runs[0]
    run = RunDir(tmp_path / order)
    run.write_spec(spec.to_dict())
    with _store_socket() as store:
        launch = {"cache_dir": str(prepare_data(cfg.data, tmp_path / "data").dir), "threads": 1}
        launch |= {"master_port": store.getsockname()[1], "store_fd": store.fileno(), "launcher_pid": 1}
        launch_file = run.write_launch(launch)
        env = environment(1, ()) | {"LOCAL_RANK": "3"}
        p = subprocess.run(
            [sys.executable, "-c", SETUP, str(run.path), str(launch_file), order],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            pass_fds=(store.fileno(),),
        )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def bound_first(calls: list[list[str]]) -> bool:
    return calls[0] == ["set_device", "3"] and ["set_device", "3"] not in calls[1:]


def test_each_rank_binds_its_gpu_before_anything_touches_a_device(tmp_path):
    done = setup_calls(tmp_path, "now")
    assert bound_first(done["calls"]), done["calls"][:5]
    assert done["device"] == "cuda:3"
    names = [c[0] for c in done["calls"]]
    assert {"TCPStore", "init_process_group", "Module.to"} <= set(names)  # the recorders saw the setup
    # The negative control: the process group joined before the device was set, as before, is caught.
    old = setup_calls(tmp_path, "old_order")
    assert not bound_first(old["calls"]) and old["calls"][0][0] == "TCPStore"


def test_a_run_s_training_process_sees_only_its_gpus(monkeypatch):
    from tasks.train.launch import environment

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert environment(1, ("2", "3"))["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert "CUDA_VISIBLE_DEVICES" not in environment(1, ())  # a CPU run: nothing to narrow


def test_cpu_machines_keep_cpu_ranks():
    assert devices.set_rank_device(0) == "cpu"
    assert devices.visible_gpus() == []
    with devices.claim([], 2) as group:
        assert group == ()
