"""The bootstrap's 95% intervals cover the truth in about 95% of repeated synthetic trials (seeded, so the
same every run); and the resampling helpers behind them."""

import numpy as np
import pandas as pd
import pytest

from tasks.fit.frontier import fit_loss_vs_compute
from tasks.fit.parametric import fit_law
from tasks.fit.stats import Bootstrap, interval, resample_counts, stratified_counts, weighted_line, weighted_parabola
from tasks.fit.table import best_lr_points, prepare
from tests.tasks.fit.synthetic import ALPHA, BETA, A, B, E, grid_runs


def test_loss_vs_compute_intervals_cover_the_truth_95_percent_of_the_time():
    # 100 trials of 40 runs on L = 30 C^-0.05 with 0.3% noise (small enough that every run stays on the
    # frontier), 200 resamples each. Binomial sd of the coverage at 95%: 2.2%; we accept 90% to 99%.
    flops = np.geomspace(1e15, 1e20, 40)
    covered = []
    for trial in range(100):
        loss = 30 * flops**-0.05 * np.exp(3e-3 * np.random.default_rng(1000 + trial).standard_normal(40))
        runs = pd.DataFrame({"run_id": [str(i) for i in range(40)], "flops": flops, "val_loss": loss})
        p = fit_loss_vs_compute(runs, [], Bootstrap(200, trial)).entry["params"]
        covered.append([p["b"]["lo"] <= 0.05 <= p["b"]["hi"], p["a"]["lo"] <= 30 <= p["a"]["hi"]])
    coverage = np.mean(covered, axis=0)
    assert ((0.90 <= coverage) & (coverage <= 0.99)).all(), coverage


def test_parametric_intervals_cover_the_truth_about_95_percent_of_the_time():
    # 30 trials of the 36-run grid with 0.05% noise (inside Huber's quadratic zone), 60 resamples each,
    # started at the truth to keep it fast (recovery from bad starts is tested elsewhere). Per parameter the
    # binomial sd at 95% is 4%; pooled over the five (correlated) parameters we accept 88% to 99%.
    truth = np.array([np.log(A), np.log(B), np.log(E), ALPHA, BETA])
    covered = []
    for trial in range(30):
        points = best_lr_points(prepare(grid_runs(noise=5e-4, seed=100 + trial)).used)
        law = fit_law(points, truth[None], Bootstrap(60, trial))
        lo, hi = np.nanpercentile(law.samples, [2.5, 97.5], axis=0)
        covered.append((lo <= truth) & (truth <= hi))
    coverage = np.mean(covered)
    assert 0.88 <= coverage <= 0.99, np.mean(covered, axis=0)


def test_resample_counts_draw_n_with_replacement():
    rng = np.random.default_rng(0)
    counts = resample_counts(rng, 10, 500)
    assert counts.shape == (500, 10) and (counts.sum(axis=1) == 10).all()
    assert counts.mean() == pytest.approx(1.0, abs=0.05) and (counts == 0).any()
    groups = np.array([0, 0, 0, 1, 1, 2])
    strat = stratified_counts(rng, groups, 200)
    assert (strat[:, :3].sum(1) == 3).all() and (strat[:, 3:5].sum(1) == 2).all() and (strat[:, 5] == 1).all()


def test_weighted_fits_equal_least_squares_on_repeated_points():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=8), rng.normal(size=8)
    w = rng.integers(0, 3, (4, 8)).astype(float)
    slope, intercept = weighted_line(x, y, w)
    coef = weighted_parabola(x, y, w)
    for i, row in enumerate(w):
        xs, ys = np.repeat(x, row.astype(int)), np.repeat(y, row.astype(int))
        np.testing.assert_allclose([slope[i], intercept[i]], np.polyfit(xs, ys, 1), rtol=1e-10)
        np.testing.assert_allclose(coef[i][::-1], np.polyfit(xs, ys, 2), rtol=1e-8)
    assert np.isnan(weighted_line(x, y, np.eye(8)[:1])[0]).all()  # one point: no line


def test_interval_is_null_without_samples():
    assert interval(1.0, np.array([])) == {"value": 1.0, "lo": None, "hi": None}
    iv = interval(1.0, np.arange(101.0))
    assert (iv["lo"], iv["hi"]) == (2.5, 97.5)
