import pytest

from models.registry import model_config
from tasks.config import ConfigError, load_sweep, parse_overrides
from tasks.plan import format_plan, plan_sweep
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
    text = format_plan(plan(tmp_path, lrs="[1.0e-3, 3.0e-3]"), concurrency=2)
    assert "n_params" in text and "nonembed" in text and "4 runs" in text and "concurrency 2" in text
