"""tasks.train.step: a non-finite step is skipped and recorded, a streak of them diverges, a spike is recorded."""

import json

import pytest

from tasks.config import load_sweep
from tasks.config.load import parse_overrides
from tasks.data import prepare_data
from tasks.layout import RunDir
from tasks.plan import plan_sweep
from tasks.track.events import read_events
from tasks.train.launch import train_run
from tests.conftest import tiny_sweep


@pytest.fixture
def train_with(tmp_path, monkeypatch):
    """Train the one run of a tiny sweep with the given faults (tasks.train.faults); returns its run folder."""
    data = {}

    def train(name: str, faults: dict, *overrides: str) -> RunDir:
        cfg = load_sweep(tiny_sweep(tmp_path, sizes="[t1]"), parse_overrides(list(overrides)))
        spec = plan_sweep(cfg).runs[0]
        if "cache" not in data:
            data["cache"] = prepare_data(cfg.data, tmp_path / "data")
        (tmp_path / f"{name}.json").write_text(json.dumps(faults))
        monkeypatch.setenv("SCALING_FAULTS", str(tmp_path / f"{name}.json"))
        run = RunDir(tmp_path / name / spec.run_id)
        train_run(spec, run, data["cache"].dir, 1)
        return run

    return train


def events(run: RunDir) -> list[tuple[int, str, int]]:
    return [(e["step"], e["kind"], e["count"]) for e in read_events(run.events).to_pylist()]


@pytest.mark.fault("non_finite")
@pytest.mark.fault("spike")
@pytest.mark.parametrize("zero_stage", [pytest.param("0", marks=pytest.mark.fault("spike", quick=True)), "1"])
def test_a_skipped_update_and_a_spike_are_recorded_at_their_steps(train_with, fired, zero_stage):
    stage = f"train.zero_stage={zero_stage}"
    reference = train_with("reference", {}, stage)
    assert reference.status() == "completed" and events(reference) == []  # the negative control
    run = train_with("faulty", {"inf_grad_at": [6], "nan_loss_at": [9], "spike_at": [13]}, stage)
    log = run.log.read_text()
    for fault in ("infinite gradients at step 6", "NaN loss at step 9", "loss x10 at step 13"):
        fired(f"fault: {fault}" in log, fault)
    assert events(run) == [(6, "skipped_update", 1), (9, "skipped_update", 2), (13, "loss_spike", 1)]
    assert run.status() == "completed"  # each one survived: the weights never took a non-finite update
    assert run.read_status()["val_loss"] < 6.0


@pytest.mark.fault("non_finite", quick=True)
def test_non_finite_from_a_step_on_ends_the_run_diverged(train_with, fired):
    run = train_with("diverging", {"nan_from": 7})
    fired("fault: NaN loss at step 7" in run.log.read_text(), "NaN loss from step 7 on")
    assert run.status() == "diverged"
    assert events(run) == [(s, "skipped_update", s - 6) for s in range(7, 12)]
    assert run.read_status()["step"] == 11
