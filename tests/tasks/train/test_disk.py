"""tasks.train.disk: a full disk during a checkpoint save or a curve write is a clean, retryable error."""

import json
import subprocess

import pytest

from tasks.config import load_sweep
from tasks.data import prepare_data
from tasks.layout import RunDir, complete_checkpoints
from tasks.plan import plan_sweep
from tasks.train.disk import clear_partial_writes, free_bytes
from tasks.train.launch import train_run
from tasks.train.resume import damage
from tests.conftest import curve_losses as losses
from tests.conftest import tiny_sweep


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs: a filesystem the test can fill without touching the machine's own disk."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_partial_writes_are_cleared_and_sealed_checkpoints_kept(tmp_path):
    run = RunDir(tmp_path / "run")
    for step, sealed in ((4, True), (8, False)):
        (run.ckpt / f"step{step}").mkdir(parents=True)
        (run.ckpt / f"step{step}" / "mp_rank_00_model_states.pt").write_bytes(b"x")
        if sealed:
            (run.ckpt / f"step{step}" / "COMPLETE").write_text(str(step))
    (run.curve).mkdir(parents=True)
    (run.curve / ".part-000002.parquet.tmp-12-ab").write_bytes(b"torn")
    (run.curve / "part-000001.parquet").write_bytes(b"whole")
    gone = clear_partial_writes(run)
    assert sorted(p.name for p in gone) == [".part-000002.parquet.tmp-12-ab", "step8"]
    assert [p.name for p in complete_checkpoints(run.ckpt)] == ["step4"]
    assert (run.curve / "part-000001.parquet").exists()


@pytest.mark.slow
@pytest.mark.fault("disk_full")
@pytest.mark.parametrize(
    "where, step", [pytest.param("checkpoint", 8, marks=pytest.mark.fault("disk_full", quick=True)), ("curve", 12)]
)
def test_a_full_disk_fails_cleanly_keeps_what_was_committed_and_resumes_once_freed(
    tmp_path, small_disk, monkeypatch, fired, where, step
):
    cfg = load_sweep(tiny_sweep(tmp_path, sizes="[t1]", multipliers="[1.0]", checkpoint_interval=4))
    spec = plan_sweep(cfg).runs[0]
    cache = prepare_data(cfg.data, tmp_path / "data")
    reference = RunDir(tmp_path / "reference")
    assert train_run(spec, reference, cache.dir, 1).status == "completed"

    faults = tmp_path / "faults.json"
    fill = small_disk / "fill"
    faults.write_text(json.dumps({"fill_disk": [step, where, str(fill)]}))
    monkeypatch.setenv("SCALING_FAULTS", str(faults))
    run = RunDir(small_disk / spec.run_id)
    failed = train_run(spec, run, cache.dir, 1)
    record = faults.with_name("faults.json.fired")
    fired(
        record.exists() and record.read_text() == f"fill {where} {step}\n",
        f"filled the disk before the {where} write at step {step}",
    )
    assert failed.status == "failed" and failed.message.startswith(f"disk full: no space left under {run.path}")
    assert "Traceback" not in run.log.read_text(), run.log.read_text()[-3000:]
    # What was committed before is intact: the checkpoint before and the curve rows up to it.
    sealed = complete_checkpoints(run.ckpt)
    assert sealed[-1].name == f"step{step - 4}" and damage(sealed[-1]) is None
    assert not list(run.ckpt.glob(f"step{step}")) and not list(run.path.rglob(".*.tmp-*"))
    committed = losses(run)
    expected = losses(reference)
    assert committed and committed == expected[: len(committed)] and committed[-1][0] <= step

    assert train_run(spec, run, cache.dir, 1).message.startswith("disk full")  # still full: fails the same way
    fill.unlink()
    assert free_bytes(small_disk) > 2**24
    resumed = train_run(spec, run, cache.dir, 1)
    assert resumed.status == "completed", resumed.message
    assert f"resumed from step{step - 4}" in run.log.read_text()
    assert losses(run) == expected  # each step once, each loss the reference's
