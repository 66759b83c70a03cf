"""tasks.plan.calibrate: a run's estimate from its model's measured step, measured once per machine; which
sweeps it applies to; and a model too big to measure keeping the FLOP-rate estimate."""

import json

import pytest

from tasks.config import load_sweep, parse_overrides
from tasks.plan import calibrate, plan_sweep
from tests.conftest import tiny_sweep


@pytest.fixture
def step_cache(tmp_path, monkeypatch):
    path = tmp_path / "steps.json"
    monkeypatch.setenv("SCALING_STEP_CACHE", str(path))
    return path


def count_measurements(monkeypatch) -> list:
    calls = []
    real = calibrate._measure

    def counted(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(calibrate, "_measure", counted)
    return calls


def plan_measured(tmp_path, *sets):
    # tiny_sweep names a FLOP rate (resources.flops_per_s), which the plan would take instead.
    cfg = load_sweep(tiny_sweep(tmp_path), parse_overrides(["resources.flops_per_s=null", *sets]))
    return cfg, plan_sweep(cfg)


def test_a_step_is_measured_once_per_model_and_remembered(tmp_path, step_cache, monkeypatch):
    calls = count_measurements(monkeypatch)
    cfg, plan = plan_measured(tmp_path)
    assert plan.measured_steps and len(calls) == 2  # t1 and t2; their learning rates share a model
    assert len(json.loads(step_cache.read_text())) == 2
    again = plan_sweep(cfg)
    assert len(calls) == 2 and [r.est_wall_s for r in again.runs] == [r.est_wall_s for r in plan.runs]
    step_cache.unlink()  # the negative control: without the cache, it measures again
    plan_sweep(cfg)
    assert len(calls) == 4


def test_the_estimate_is_startup_then_steps_then_evaluations(tmp_path, step_cache, monkeypatch):
    monkeypatch.setattr(calibrate, "_measure", lambda *args: 0.1)
    cfg, plan = plan_measured(tmp_path)
    for r in plan.runs:
        evals = -(-r.steps // r.eval_interval)
        eval_s = r.val_tokens / (r.micro_batch_size * r.seq_len) * 0.1 / 3
        assert r.est_wall_s == pytest.approx(cfg.resources.startup_s + r.steps * r.grad_accum * 0.1 + evals * eval_s)


def test_a_named_flop_rate_or_a_cluster_keeps_the_flop_rate_estimate(tmp_path, step_cache, monkeypatch):
    calls = count_measurements(monkeypatch)
    named = load_sweep(tiny_sweep(tmp_path))
    assert not calibrate.applies(named) and not plan_sweep(named).measured_steps
    on_slurm = load_sweep(
        tiny_sweep(tmp_path), parse_overrides(["resources.flops_per_s=null", "resources.executor=slurm"])
    )
    assert not calibrate.applies(on_slurm)
    assert calls == []


def test_a_model_whose_step_would_take_seconds_even_at_the_probes_rate_is_not_measured(
    tmp_path, step_cache, monkeypatch
):
    calls = count_measurements(monkeypatch)
    _, plan = plan_measured(tmp_path)
    (spec, *_) = plan.runs
    step_flops = spec.flops_per_token * spec.batch_tokens
    slow = calibrate.estimated(spec, 8.0, 1, flops_per_s=step_flops * calibrate.PROBE_SHARE / 60)
    assert slow is spec  # a minute a step even at the probe's full rate: the FLOP-rate estimate stands
    fast = calibrate.estimated(spec, 8.0, 1, flops_per_s=step_flops * calibrate.PROBE_SHARE)  # a second
    assert fast.est_wall_s == spec.est_wall_s and len(calls) == 2  # the plan's own measurements, cached
