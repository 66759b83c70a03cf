"""tasks.track.collect: the sweep's tables, with a damaged curve reported, never fatal."""

import pyarrow.parquet as pq
import pytest

from tasks.config import load_sweep
from tasks.layout import Layout
from tasks.plan import plan_sweep
from tasks.track.collect import collect
from tasks.track.curves import CurveLog
from tests.conftest import tiny_sweep


def finished_run(layout, spec, steps=(5, 10, 15, 20)):
    run = layout.run(spec.run_id)
    curve = CurveLog(run.curve, {k: getattr(spec, k) for k in ("sweep", "run_id", "arch", "n_params")})
    for step in steps:
        curve.append(step=step, tokens_seen=step, train_loss=1.0 / step, timestamp_ms=step)
        curve.flush()  # a part a step, as checkpoints would commit them
    run.write_status(status="completed", step=steps[-1], train_loss=0.05, val_loss=0.06, wall_s=1.0, rows=len(steps))
    return run


@pytest.mark.fault("parquet", quick=True)
def test_a_damaged_curve_makes_its_run_corrupt_and_the_others_collect(tmp_path, fired):
    specs = plan_sweep(load_sweep(tiny_sweep(tmp_path))).runs
    layout = Layout.at(tmp_path / "out")
    sound, damaged = (finished_run(layout, s) for s in specs)
    part = sorted(damaged.curve.glob("part-*.parquet"))[1]
    whole = part.read_bytes()
    part.write_bytes(whole[:-40])  # a torn tail, as a killed writer leaves it
    fired(part.stat().st_size == len(whole) - 40, f"tore the tail off {part.name}")
    counts = collect(specs, layout, layout.sweep("tiny"))
    assert counts == {"completed": 1, "corrupt": 1}
    runs = pq.read_table(layout.sweep("tiny").runs).to_pandas().set_index("run_id")
    assert runs.status[sound.run_id] == "completed"  # the negative control: an untouched curve is whole
    assert runs.message[damaged.run_id].startswith(f"curve part {part.name}: ")
    assert "trains it again" in runs.message[damaged.run_id]
    curves = pq.read_table(layout.sweep("tiny").curves).to_pandas()
    assert set(curves.run_id) == {sound.run_id} and list(curves.step) == [5, 10, 15, 20]
