"""A training process group SIGKILLed mid-run, or mid-checkpoint, resumes to the reference's losses."""

import json
import random

import pytest

from tasks.config import load_sweep
from tasks.data import prepare_data
from tasks.layout import CHECKPOINT_DONE, RunDir
from tasks.plan import plan_sweep
from tasks.train.launch import train_run
from tasks.train.resume import MANIFEST, damage
from tests.conftest import curve_losses as losses
from tests.conftest import tiny_sweep


@pytest.fixture(scope="module")
def point(tmp_path_factory):
    """One tiny run (35 steps, a checkpoint every 4), its token cache and its uninterrupted reference."""
    tmp = tmp_path_factory.mktemp("kills")
    cfg = load_sweep(tiny_sweep(tmp, sizes="[t1]", multipliers="[1.0]", checkpoint_interval=4))
    spec = plan_sweep(cfg).runs[0]
    cache = prepare_data(cfg.data, tmp / "data")
    reference = RunDir(tmp / "reference")
    assert train_run(spec, reference, cache.dir, 1).status == "completed"
    return spec, cache, losses(reference), tmp


def train_until_done(point, name: str, faults: dict, monkeypatch, tries: int = 6) -> tuple[RunDir, int]:
    """Launch the run again after each failure, as the task's retries do; returns it and its launches."""
    spec, cache, _, tmp = point
    (tmp / f"{name}.json").write_text(json.dumps(faults))
    monkeypatch.setenv("SCALING_FAULTS", str(tmp / f"{name}.json"))
    run = RunDir(tmp / name)
    for launches in range(1, tries + 1):
        if train_run(spec, run, cache.dir, 1).status == "completed":
            return run, launches
    pytest.fail(f"{name}: not completed after {tries} launches; see {run.log}")


@pytest.mark.slow
@pytest.mark.fault("kills", quick=True)
def test_killed_at_three_seeded_steps_every_loss_is_the_references_each_step_once(point, monkeypatch, fired):
    spec, _, reference, _ = point
    steps = sorted(random.Random(0).sample(range(2, spec.steps), 3))
    run, launches = train_until_done(point, "killed", {"kill_at": steps}, monkeypatch)
    log = run.log.read_text()
    fired(all(f"fault: kill at step {k}" in log for k in steps), f"SIGKILL at steps {steps}")
    assert launches == 4
    assert log.count("resumed from step") == 3
    assert losses(run) == reference

    # The negative control: a resume that restores neither the data position nor the RNG drifts off.
    run, launches = train_until_done(point, "forgetful", {"kill_at": [10], "forget_position": True}, monkeypatch)
    assert launches == 2 and "resumed from step8" in run.log.read_text()
    assert [s for s, _ in losses(run)] == [s for s, _ in reference]
    assert losses(run) != reference


@pytest.mark.slow
@pytest.mark.fault("save_kill")
@pytest.mark.parametrize(
    "where, resumed",
    [
        pytest.param("after_shard", 4, marks=pytest.mark.fault("save_kill", quick=True)),
        ("before_marker", 4),
        ("after_marker", 8),
    ],
)
def test_killed_in_a_checkpoint_save_resumes_from_the_newest_sealed_one(point, monkeypatch, fired, where, resumed):
    spec, cache, reference, tmp = point
    (tmp / f"{where}.json").write_text(json.dumps({"kill_in_save": [8, where]}))
    monkeypatch.setenv("SCALING_FAULTS", str(tmp / f"{where}.json"))
    run = RunDir(tmp / where)
    assert train_run(spec, run, cache.dir, 1).status == "failed"
    said = f"fault: kill in the checkpoint save at step 8, {where.replace('_', ' ')}"
    fired(said in run.log.read_text(), said)
    torn = run.ckpt / "step8"
    sealed = (torn / CHECKPOINT_DONE).exists()
    assert sealed == (where == "after_marker")
    if sealed:
        assert damage(torn) is None
    else:  # the files DeepSpeed had written when it was killed, never sealed, so never loaded
        assert not (torn / MANIFEST).exists() and any(torn.rglob("*.pt"))
    assert train_run(spec, run, cache.dir, 1).status == "completed"
    log = run.log.read_text()
    assert f"resumed from step{resumed} " in log and log.count("resumed from") == 1
    assert losses(run) == reference
