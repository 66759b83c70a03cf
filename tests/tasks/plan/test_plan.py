from pathlib import Path

import pytest

from models.registry import model_config
from tasks.config import ConfigError, load_sweep, parse_overrides
from tasks.layout import CHECKPOINT_DONE, Layout
from tasks.plan import format_plan, plan_sweep, run_states
from tests.conftest import tiny_sweep


def plan(tmp_path, overrides=(), **kw):
    return plan_sweep(load_sweep(tiny_sweep(tmp_path, **kw), parse_overrides(list(overrides))))


def test_grid_is_sizes_times_budgets_times_lrs(tmp_path):
    p = plan(tmp_path, sizes="[t1, t2, t3]", multipliers="[0.5, 1.0]", lrs="[1.0e-3, 3.0e-3]")
    assert len(p.runs) == 3 * 2 * 2
    assert len({r.run_id for r in p.runs}) == 12
    for r in p.runs:
        assert r.tokens == r.steps * r.batch_tokens
        assert r.flops == pytest.approx(r.tokens * r.flops_per_token)


def test_counts_come_from_the_model_config(tmp_path):
    p = plan(tmp_path, sizes="[t2]")
    r = p.runs[0]
    cfg = model_config("transformer++", {"n_layer": 3, "d_model": 48, "n_head": 3}, vocab_size=320, seq_len=32)
    assert (r.n_params, r.n_params_nonembed) == (cfg.n_params(), cfg.n_params_nonembed())
    # 6N plus the attention term, which is not negligible at these widths
    assert r.flops_per_token > 6 * r.n_params_nonembed


def test_tokens_follow_tokens_per_parameter(tmp_path):
    p = plan(tmp_path, ["tokens.per_param=20"], sizes="[t1, t2]", multipliers="[1.0, 2.0]")
    for r in p.runs:
        mult = 2.0 if r.tokens > 30 * r.n_params else 1.0
        assert abs(r.tokens - 20 * mult * r.n_params) < r.batch_tokens


def test_run_id_is_content_not_path(tmp_path):
    for d in "abc":
        (tmp_path / d).mkdir()
    a = plan(tmp_path / "a")
    b = plan(tmp_path / "b")  # same points, other corpus folder
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]
    c = plan(tmp_path / "c", ["train.batch_tokens=2048"])
    assert not {r.run_id for r in a.runs} & {r.run_id for r in c.runs}


def test_budget_smaller_than_one_step_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="smaller than one step.*train.batch_tokens"):
        plan(tmp_path, ["tokens.per_param=0.001"])


def test_format_plan_has_table_and_totals(tmp_path):
    text = format_plan(plan(tmp_path, lrs="[1.0e-3, 3.0e-3]"), concurrency=2, mfu=0.4)
    assert "n_params" in text and "nonembed" in text and "4 runs" in text and "concurrency 2" in text


def text_corpus(folder, extra: str = "") -> str:
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("the same words " * 500 + extra)
    (folder / "b.txt").write_text("and some more " * 500)
    return str(folder)


def ids(tmp_path, *overrides) -> list[str]:
    return [r.run_id for r in plan(tmp_path, list(overrides)).runs]


@pytest.mark.fault("identity", quick=True)
def test_run_id_follows_the_data_content_not_its_path(tmp_path, fired):
    a = text_corpus(tmp_path / "a")
    same_elsewhere = text_corpus(tmp_path / "copy" / "of-a")
    one_byte_more = text_corpus(tmp_path / "b", extra="!")
    sizes = [sum(f.stat().st_size for f in Path(d).iterdir()) for d in (a, one_byte_more)]
    fired(sizes[1] == sizes[0] + 1, "two corpora one byte apart")
    base = ids(tmp_path, "data.source=text", f"data.path={a}")
    assert ids(tmp_path, "data.source=text", f"data.path={same_elsewhere}") == base
    assert not set(ids(tmp_path, "data.source=text", f"data.path={one_byte_more}")) & set(base)
    for change in ("data.subsets=[Pile-CC]", "data.mixture={unlabelled: 2.0}", "data.on_bad_record=skip"):
        assert not set(ids(tmp_path, "data.source=text", f"data.path={a}", change)) & set(base), change


def test_ranks_and_zero_stage_are_part_of_a_run(tmp_path):
    base = set(ids(tmp_path))
    assert not set(ids(tmp_path, "resources.ranks_per_run=2")) & base
    assert not set(ids(tmp_path, "train.zero_stage=2")) & base
    assert set(ids(tmp_path, "resources.concurrency=1")) == base  # how many run at once changes nothing


def test_plan_says_what_a_run_of_the_sweep_would_do(tmp_path):
    p = plan(tmp_path, sizes="[t1]", lrs="[1.0e-3, 3.0e-3, 1.0e-2]")
    layout = Layout.at(tmp_path / "out")
    done, resuming, new = (layout.run(r.run_id) for r in p.runs)
    done.path.mkdir(parents=True)
    done.write_status(status="completed", step=8)
    (resuming.ckpt / "step20").mkdir(parents=True)
    (resuming.ckpt / "step20" / CHECKPOINT_DONE).write_text("20")
    (resuming.ckpt / "step30").mkdir()  # a checkpoint killed before its marker does not count
    states = {r.run_id: layout.run(r.run_id).state() for r in p.runs}
    assert [states[r.run_id] for r in p.runs] == ["completed", "resume at step 20", "new"]
    text = format_plan(p, 1, 0.4, states)
    assert "resume at step 20" in text and "1 finished (skipped), 1 resuming, 1 new" in text


def test_a_point_trained_at_another_world_size_is_named_not_resumed(tmp_path):
    layout = Layout.at(tmp_path / "out")
    [one] = plan(tmp_path, sizes="[t1]").runs
    old = layout.run(one.run_id)
    old.write_spec(one.to_dict())
    (old.ckpt / "step20").mkdir(parents=True)
    (old.ckpt / "step20" / CHECKPOINT_DONE).write_text("20")
    p = plan(tmp_path, ["resources.ranks_per_run=2"], sizes="[t1]")
    [two] = p.runs
    states = run_states(p, layout)
    assert states[two.run_id] == "new: resume at step 20 at 1 ranks is another run, not resumed at 2"
    assert "0 finished (skipped), 0 resuming, 1 new" in format_plan(p, 1, 0.4, states)
    # The negative control: at its own world size the point resumes.
    assert run_states(plan(tmp_path, sizes="[t1]"), layout) == {one.run_id: "resume at step 20"}
