"""tasks.train.node: one run over 2 "nodes" of 1 rank each, on 127.0.0.1 with gloo, each started as a cluster
would start it, joined by torchrun's c10d rendezvous; it trains the curve that 2 ranks on one node train."""

import socket
import subprocess
import sys

import pytest

from tasks.config import ConfigError, load_sweep, parse_overrides
from tasks.data import prepare_data
from tasks.layout import RunDir
from tasks.plan import plan_sweep
from tasks.train.launch import train_run
from tests.conftest import ROOT, curve_losses, tiny_sweep
from tests.tasks.train.test_ranks import TOLERANCE, differences


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_run_over_two_nodes_trains_what_two_ranks_on_one_node_train(tmp_path):
    sweep = tiny_sweep(tmp_path, sizes="[t1]", multipliers="[2.0]")
    on_nodes = load_sweep(
        sweep, parse_overrides(["resources.executor=slurm", "resources.nodes_per_run=2", "train.zero_stage=2"])
    )
    on_one = load_sweep(sweep, parse_overrides(["resources.ranks_per_run=2", "train.zero_stage=2"]))
    spec, same = plan_sweep(on_nodes).runs[0], plan_sweep(on_one).runs[0]
    assert (spec.ranks, spec.nodes, spec.ranks_per_node) == (2, 2, 1)
    assert spec.run_id == same.run_id  # one world size: either layout resumes the other's checkpoints
    cache = prepare_data(on_nodes.data, tmp_path / "data")

    run = RunDir(tmp_path / "nodes")
    run.write_spec(spec.to_dict())
    endpoint = f"127.0.0.1:{free_port()}"
    node = [sys.executable, "-m", "tasks.train.node", str(run.path), str(cache.dir), "--rdzv-endpoint", endpoint]
    nodes = [subprocess.Popen(node, cwd=ROOT) for _ in range(2)]
    assert [n.wait(timeout=600) for n in nodes] == [0, 0], run.log.read_text()[-3000:]
    log = run.log.read_text()
    assert run.status() == "completed" and log.count("2 rank(s) on cpu") == 1, log[-3000:]

    reference = RunDir(tmp_path / "one-node")
    assert train_run(same, reference, cache.dir, 1).status == "completed"
    gap = differences(curve_losses(reference), curve_losses(run))
    print(f"2 nodes x 1 rank - 1 node x 2 ranks: max {max(gap):.2e} nats")
    assert max(gap) <= TOLERANCE

    # Started again, each node sees the run finished and trains nothing.
    again = subprocess.run(node, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already completed, skipped" in again.stdout


def test_a_run_over_nodes_is_refused_where_no_executor_starts_them(tmp_path):
    for executor in ("local", "ray", "kubernetes"):
        with pytest.raises(ConfigError, match=f"resources.nodes_per_run: 2 with executor {executor}: .* slurm"):
            load_sweep(tiny_sweep(tmp_path), {"resources.nodes_per_run": 2, "resources.executor": executor})
    assert load_sweep(tiny_sweep(tmp_path), {"resources.nodes_per_run": 2, "resources.executor": "slurm"})
