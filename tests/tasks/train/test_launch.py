"""tasks.train.launch: one launcher at a time per run, each with its own launch record."""

import os
import threading
from contextlib import contextmanager

import pyarrow.parquet as pq
import pytest

from tasks.config import load_sweep
from tasks.data import prepare_data
from tasks.layout import RunDir
from tasks.plan import plan_sweep
from tasks.track.curves import read_curve
from tasks.track.events import read_events
from tasks.train.launch import train_run
from tasks.train.resume import damage
from tests.conftest import curve_losses, tiny_sweep


@pytest.fixture
def one_run(tmp_path):
    cfg = load_sweep(tiny_sweep(tmp_path, sizes="[t1]"))
    spec = plan_sweep(cfg).runs[0]
    return spec, RunDir(tmp_path / "runs" / spec.run_id), prepare_data(cfg.data, tmp_path / "data")


def launch_twice_at_once(spec, run, cache) -> tuple[list, list[str]]:
    results, waited = [None, None], []

    def launch(i):
        results[i] = train_run(spec, run, cache.dir, 1, on_wait=waited.append)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, waited


@pytest.mark.slow
@pytest.mark.fault("twice", quick=True)
def test_the_same_run_launched_twice_at_once_trains_once(one_run, monkeypatch, fired):
    spec, run, cache = one_run
    results, waited = launch_twice_at_once(spec, run, cache)
    fired(len(waited) == 1, f"the second launcher met the first one's lock: {waited}")
    assert sorted(r.skipped for r in results) == [False, True]  # one trained, the other waited and skipped
    assert f"pid {os.getpid()}" in waited[0]
    assert run.log.read_text().count("rank(s) on") == 1
    steps = read_curve(run.curve).column("step").to_pylist()
    assert steps == sorted(set(steps)) and steps[-1] == spec.steps
    assert not list(run.path.glob("launch-*.json"))  # each launcher's record goes with it

    # The negative control: without the lock both launchers train the run.
    @contextmanager
    def no_lock(self, on_wait=None):
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            yield fd
        finally:
            os.close(fd)

    other = RunDir(run.path.with_name("unlocked"))
    monkeypatch.setattr(RunDir, "lock", no_lock)
    other.path.mkdir()
    results, waited = launch_twice_at_once(spec, other, cache)
    assert [r.skipped for r in results] == [False, False] and not waited
    assert other.log.read_text().count("rank(s) on") == 2


def truncate_a_shard(folder) -> str:
    states = folder / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:1000])  # as a full disk or a kill mid-copy leaves it
    return "mp_rank_00_model_states.pt does not match its manifest"


def flip_bytes(folder) -> str:
    shard = max(folder.rglob("*.pt"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 4])
    shard.write_bytes(data)
    return f"{shard.relative_to(folder)} does not match its manifest"


def delete_a_shard(folder) -> str:
    shard = sorted(folder.rglob("*.pt"))[-1]
    shard.unlink()
    return f"{shard.relative_to(folder)} is missing"


@pytest.mark.slow
@pytest.mark.fault("corrupt_ckpt")
@pytest.mark.parametrize(
    "corrupt",
    [pytest.param(truncate_a_shard, marks=pytest.mark.fault("corrupt_ckpt", quick=True)), flip_bytes, delete_a_shard],
)
def test_a_damaged_newest_checkpoint_costs_only_the_steps_since_the_one_before(tmp_path, fired, corrupt):
    cfg = load_sweep(tiny_sweep(tmp_path, sizes="[t1]", multipliers="[1.0]", checkpoint_interval=4))
    spec = plan_sweep(cfg).runs[0]
    cache = prepare_data(cfg.data, tmp_path / "data")
    reference = RunDir(tmp_path / "reference")
    assert train_run(spec, reference, cache.dir, 1).status == "completed"

    run = RunDir(tmp_path / "damaged")
    train_run(spec, run, cache.dir, 1)
    older, newest = sorted(run.ckpt.glob("step*"), key=lambda p: int(p.name[4:]))[-2:]
    assert damage(newest) is None  # the negative control: sealed and untouched, it is sound
    why = corrupt(newest)
    fired(damage(newest) is not None, f"{corrupt.__name__} in {newest.name}: {damage(newest)}")
    run.clear_status()  # as if the process had died after that checkpoint
    assert train_run(spec, run, cache.dir, 1).status == "completed"
    log = run.log.read_text()
    assert f"checkpoint {newest.name} rejected: {why}" in log
    assert f"resumed from {older.name}" in log
    [event] = read_events(run.events).to_pylist()
    assert (event["kind"], event["step"], event["value"]) == (
        "checkpoint_rejected",
        int(older.name[4:]),
        int(newest.name[4:]),
    )
    assert curve_losses(run) == curve_losses(reference)


@pytest.mark.slow
@pytest.mark.fault("parquet")
def test_a_finished_run_with_a_damaged_curve_trains_again(one_run, fired):
    spec, run, cache = one_run
    first = train_run(spec, run, cache.dir, 1)
    assert first.status == "completed" and not train_run(spec, run, cache.dir, 1).process_s  # skipped when whole
    before = run.read_status()
    part = sorted(run.curve.glob("part-*.parquet"))[-1]
    lost = pq.read_table(part).num_rows
    part.unlink()
    fired(not part.exists() and lost > 0, f"deleted {part.name} ({lost} rows)")
    again = train_run(spec, run, cache.dir, 1)
    assert not again.skipped and again.status == "completed"
    log = run.log.read_text()
    assert f"restarted: the curve has {before['rows'] - lost} of the {before['rows']} rows its run logged" in log
    assert log.count("rank(s) on") == 2
    after = run.read_status()
    assert after["rows"] == before["rows"] and after["train_loss"] == before["train_loss"]
