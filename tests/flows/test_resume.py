"""A training process killed mid-run resumes from its last checkpoint, with nothing duplicated."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from tasks.train.resume import seal
from tests.conftest import ROOT, scaling, tiny_sweep


def trainers_of(out: Path) -> list[int]:
    """The live training processes of runs under `out` (those of other tests or sessions are not counted)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"tasks.train.process" in cmd and str(out).encode() in cmd and state != "Z":
            pids.append(int(d.name))
    return pids


def completed_checkpoints(out: Path) -> list[int]:
    return [int(p.parent.name[4:]) for p in out.glob("runs/*/ckpt/step*/COMPLETE")]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def run_and_kill_at(sweep: Path, out: Path, step: int, env: dict, fired, *flags: str) -> subprocess.CompletedProcess:
    """`scaling run` with the training process group SIGKILLed once a checkpoint at `step` is complete."""
    exe = Path(sys.executable).with_name("scaling")
    proc = subprocess.Popen(
        [str(exe), "run", str(sweep), "--output", str(out), *flags],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 300
    while max(completed_checkpoints(out), default=0) < step:
        assert proc.poll() is None and time.time() < deadline, f"no checkpoint at step {step} in time"
        time.sleep(0.2)
    pids = trainers_of(out)
    assert len(pids) == 1
    os.killpg(os.getpgid(pids[0]), signal.SIGKILL)  # the fault: the training process group dies
    deadline = time.time() + 10
    while not gone(pids[0]) and time.time() < deadline:
        time.sleep(0.1)
    fired(gone(pids[0]), f"SIGKILL of the training process group at step {step}")
    output = proc.communicate(timeout=600)[0].decode()
    return subprocess.CompletedProcess(proc.args, proc.returncode, output)


@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path, prefect_env, fired):
    sweep = tiny_sweep(
        tmp_path, sizes="[t2]", multipliers="[2.0]", checkpoint_interval=10, eval_interval=10, concurrency=1
    )
    out = tmp_path / "out"
    # No retries: this invocation ends with the run failed, and the next one resumes it.
    run_and_kill_at(sweep, out, 30, prefect_env, fired, "--set", "resources.retries=0")

    sweep_dir = out / "sweeps" / "tiny"
    runs = pq.read_table(sweep_dir / "runs.parquet").to_pandas()
    assert list(runs.status) == ["failed"]
    killed_at = max(completed_checkpoints(out))

    scaling("run", sweep, "--output", out, env=prefect_env)
    log = next(out.glob("runs/*/train.log")).read_text()
    assert f"resumed from step{killed_at}" in log
    runs = pq.read_table(sweep_dir / "runs.parquet").to_pandas()
    assert list(runs.status) == ["completed"]
    curves = pq.read_table(sweep_dir / "curves.parquet").to_pandas()
    assert not curves.step.duplicated().any()
    assert list(curves.step) == sorted(set(range(5, runs.steps[0] + 1, 5)) | {runs.steps[0]})

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    children = [r for r in client.search_runs([exp.experiment_id]) if "run_id" in r.data.tags]
    assert len(children) == 1
    hist = client.get_metric_history(children[0].info.run_id, "train_loss")
    assert sorted(m.step for m in hist) == list(curves.step)

    # Each checkpoint records the data position it holds for; a resume onto other data stops.
    run_dir = next(out.glob("runs/*"))
    ckpt = max(run_dir.glob("ckpt/step*/COMPLETE"), key=lambda p: int(p.parent.name[4:])).parent
    states = ckpt / "mp_rank_00_model_states.pt"
    state = torch.load(states, weights_only=False)
    step = int(ckpt.name[4:])
    assert state["data"] == {
        "cache_key": state["data"]["cache_key"],
        "loader": "random windows",
        "seed": 0,
        "next_step": step,
    }
    state["data"]["cache_key"] = "another corpus"
    torch.save(state, states)
    seal(ckpt, step)  # as a checkpoint written whole, on other data, would be
    (run_dir / "status.json").unlink()
    scaling("run", sweep, "--output", out, env=prefect_env, check=False)
    assert f"{ckpt} was trained on other data" in (run_dir / "train.log").read_text()
    assert list(pq.read_table(sweep_dir / "runs.parquet").to_pandas().status) == ["failed"]

    # The same point trained without interruption reaches the same losses: the data position,
    # optimizer, schedule and RNG state all came back from the checkpoint.
    straight = tmp_path / "straight"
    scaling("run", sweep, "--output", straight, env=prefect_env)
    ref = pq.read_table(straight / "sweeps" / "tiny" / "curves.parquet").to_pandas()
    assert list(ref.step) == list(curves.step)
    assert (ref.train_loss.values == curves.train_loss.values).all()
    assert ref.val_loss.equals(curves.val_loss)


@pytest.mark.slow
@pytest.mark.fault("kills")
@pytest.mark.fault("non_finite")
def test_a_killed_run_is_retried_in_the_same_invocation_and_a_diverged_one_is_not(tmp_path, prefect_env, fired):
    sweep = tiny_sweep(
        tmp_path, sizes="[t2]", multipliers="[2.0]", lrs="[3.0e-3, 1.0e+30]", checkpoint_interval=10, concurrency=1
    )
    out = tmp_path / "out"
    done = run_and_kill_at(sweep, out, 20, prefect_env, fired, "--set", "resources.retry_delay_s=1")
    assert done.returncode == 0, done.stdout[-3000:]

    runs = pq.read_table(out / "sweeps" / "tiny" / "runs.parquet").to_pandas().set_index("lr")
    assert runs.status[3e-3] == "completed" and runs.status[1e30] == "diverged"
    logs = {lr: (out / "runs" / runs.run_id[lr] / "train.log").read_text() for lr in (3e-3, 1e30)}
    assert logs[3e-3].count("rank(s) on") == 2 and "resumed from step" in logs[3e-3]  # retried, resumed
    assert logs[1e30].count("rank(s) on") == 1  # diverged: never retried
    steps = pq.read_table(out / "sweeps" / "tiny" / "curves.parquet").to_pandas()
    assert not steps.duplicated(["run_id", "step"]).any()
