"""tasks.fit.parametric (Chinchilla approach 3) and its objective: recovery of a known L(N, D), from bad
starts too; the batched search against polishing every start; convergence states; degenerate input."""

import numpy as np
import pytest

from tasks.fit import parametric
from tasks.fit.objective import dead_terms, objective_batch, parametric_objective
from tasks.fit.parametric import Data, fit_law, fit_parametric, polish, search, start_grid
from tasks.fit.stats import Bootstrap
from tasks.fit.table import best_lr_points, prepare
from tests.tasks.fit.synthetic import ALPHA, BETA, TRUE_A, TRUE_G, A, B, E, grid_runs

BUDGETS = [1e20, 1e22]
TRUTH = np.array([np.log(A), np.log(B), np.log(E), ALPHA, BETA])


def points(**kw):
    return best_lr_points(prepare(grid_runs(**kw)).used)


@pytest.fixture(scope="module")
def fit():
    return fit_parametric(points(), BUDGETS, start_grid(32), Bootstrap(100, 0, "t"))


def test_recovers_the_known_law_and_allocation(fit):
    assert fit["status"] == "ok"
    p, e = fit["params"], fit["exponents"]
    # 0.1% noise on 36 runs: exponents to 0.01, E to 1%, the prefactors (tied to the exponents) to 10%.
    assert p["alpha"]["value"] == pytest.approx(ALPHA, abs=0.01)
    assert p["beta"]["value"] == pytest.approx(BETA, abs=0.01)
    assert p["E"]["value"] == pytest.approx(E, rel=0.01)
    assert p["A"]["value"] == pytest.approx(A, rel=0.1)
    assert p["B"]["value"] == pytest.approx(B, rel=0.1)
    assert e["a"]["value"] == pytest.approx(TRUE_A, abs=0.01)
    assert e["G"]["value"] == pytest.approx(TRUE_G, rel=0.25)
    for name in ("alpha", "beta", "E", "A", "B"):
        assert p[name]["lo"] <= p[name]["value"] <= p[name]["hi"]
    assert p["alpha"]["hi"] - p["alpha"]["lo"] < 0.01
    conv = fit["convergence"]
    assert conv["state"] == "converged" and conv["converged"] and conv["on_bound"] == []
    assert conv["objective"] > 0 and conv["starts"] == 32
    assert fit["bootstrap"] == {"resamples": 100, "ok": 100, "seed": 0}
    assert fit["residual_rms"] < 3e-3


def test_compute_optimum_is_the_minimum_of_the_iso_flop_curve(fit):
    alpha, beta = fit["params"]["alpha"]["value"], fit["params"]["beta"]["value"]
    assert fit["exponents"]["a"]["value"] == pytest.approx(beta / (alpha + beta))
    assert fit["exponents"]["b"]["value"] == pytest.approx(alpha / (alpha + beta))

    def loss(n, d):
        p = fit["params"]
        return p["E"]["value"] + p["A"]["value"] / n**alpha + p["B"]["value"] / d**beta

    for budget, pred in zip(BUDGETS, fit["predictions"]):
        n, d = pred["n_opt"]["value"], pred["d_opt"]["value"]
        assert 6 * n * d == pytest.approx(budget)
        assert n == pytest.approx(fit["exponents"]["G"]["value"] * budget ** fit["exponents"]["a"]["value"])
        assert pred["tokens_per_param"]["value"] == pytest.approx(d / n)
        assert pred["loss"]["value"] == pytest.approx(loss(n, d))
        assert pred["n_opt"]["lo"] < n < pred["n_opt"]["hi"]
        for shift in (0.8, 1.25):
            assert loss(n * shift, d / shift) > pred["loss"]["value"]


@pytest.mark.parametrize(
    "starts",
    [
        [[25.0, 25.0, 1.0, 2.0, 2.0]],  # A and B e^25 times too large, exponents 6x too steep
        [[0.0, 0.0, -1.0, 0.0, 0.0], [25.0, 0.0, 1.0, 0.0, 2.0]],  # flat laws, and a lopsided one
    ],
)
def test_recovers_from_deliberately_bad_starts(starts):
    law = fit_law(points(noise=3e-3, seed=1), np.array(starts), Bootstrap(0, 0))
    assert law.convergence["state"] == "converged"
    np.testing.assert_allclose(law.theta[3:], [ALPHA, BETA], atol=0.02)
    assert np.exp(law.theta[2]) == pytest.approx(E, rel=0.02)


def test_batched_search_finds_the_optimum_of_polishing_every_start(monkeypatch):
    # Few kept starts, so that screening really prunes: 32 starts, 6 kept after the screen, 2 polished.
    monkeypatch.setattr(parametric, "KEEP", 6)
    monkeypatch.setattr(parametric, "POLISH", 2)
    data = Data.of(points(sizes=4, token_counts=4, noise=1e-2, seed=2))
    starts = start_grid(32)
    best, info = search(starts, data)
    everyone = min((polish(x0, data) for x0 in starts), key=lambda r: r.fun)
    assert info["screened_to"] == 6 and info["polished"] == 2 and info["agreeing_starts"] >= 1
    assert best.fun <= everyone.fun * (1 + 1e-9)
    np.testing.assert_allclose(best.x, everyone.x, atol=1e-4)


def test_a_law_without_a_data_term_is_reported_on_a_bound():
    runs = grid_runs(noise=0.0)
    runs["val_loss"] = E + A / runs["n_params"] ** ALPHA  # no D dependence at all: B -> 0
    law = fit_law(best_lr_points(prepare(runs).used), start_grid(16), Bootstrap(0, 0))
    assert law.convergence["state"] == "on a bound" and not law.convergence["converged"]
    assert set(law.convergence["on_bound"]) & {"B", "beta"}


def test_a_fit_out_of_iterations_is_reported_stopped_early(monkeypatch):
    monkeypatch.setattr(parametric, "RUN_ITERS", 1)
    monkeypatch.setattr(parametric, "LBFGS_OPTIONS", {**parametric.LBFGS_OPTIONS, "maxiter": 2})
    law = fit_law(points(), np.array([[20.0, 20.0, 1.0, 1.5, 1.5]]), Bootstrap(0, 0))
    assert law.convergence["state"] == "stopped early"
    assert "ITERATIONS" in law.convergence["message"].upper()


@pytest.mark.parametrize(
    "sizes, token_counts, words",
    [
        (1, 1, "1 distinct (n_params, tokens) point(s) for 5 parameters; need at least 6"),
        (5, 1, "need at least 6"),  # five points for five parameters: an interpolation, not a fit
        (1, 8, "1 distinct n_params"),  # a single model size
        (8, 2, "2 distinct tokens"),
    ],
)
def test_too_little_input_is_skipped_with_a_reason(sizes, token_counts, words):
    fit = fit_parametric(points(sizes=sizes, token_counts=token_counts), BUDGETS, start_grid(4), Bootstrap(0, 0))
    assert fit == {"status": "skipped", "reason": fit["reason"]}
    assert words in fit["reason"]


def test_equal_losses_and_a_single_ratio_are_skipped_with_a_reason():
    flat = grid_runs().assign(val_loss=3.0)
    fit = fit_parametric(best_lr_points(prepare(flat).used), BUDGETS, start_grid(4), Bootstrap(0, 0))
    assert fit["status"] == "skipped" and "all 36 losses are equal (3)" in fit["reason"]
    ratio = grid_runs(token_counts=1).assign(tokens=lambda t: 20 * t["n_params"])
    fit = fit_parametric(best_lr_points(prepare(ratio).used), BUDGETS, start_grid(4), Bootstrap(0, 0))
    assert fit["status"] == "skipped"


def test_start_grid_is_chinchillas():
    grid = start_grid("full")
    assert grid.shape == (4500, 5) and len(np.unique(grid, axis=0)) == 4500
    assert grid[:, :2].max() == 25 and grid[:, 2].min() == -1 and grid[:, 2].max() == 1 and grid[:, 3:].max() == 2
    sub = start_grid(64)
    assert sub.shape == (64, 5) and (sub[:, None] == grid[None]).all(-1).any(-1).all()


@pytest.mark.parametrize("theta", [(6.0, 7.6, 0.59, 0.34, 0.37), (3.0, 9.0, -0.5, 0.2, 0.5), (25, 25, 1, 2, 0)])
def test_objective_gradient_matches_finite_differences(theta):
    data = Data.of(points(sizes=4, token_counts=4, noise=2e-3))
    weights = np.random.default_rng(0).integers(0, 3, len(data.log_n)).astype(float)
    theta = np.array(theta, float)
    for w in (None, weights):
        args = (data.log_n, data.log_d, data.log_loss, 1e-3, w)
        _, grad = parametric_objective(theta, *args)
        step = 1e-7
        numeric = [
            (parametric_objective(theta + step * e, *args)[0] - parametric_objective(theta - step * e, *args)[0])
            / (2 * step)
            for e in np.eye(5)
        ]
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-10)


def test_batched_objective_is_the_scalar_objective_row_by_row():
    data = Data.of(points(sizes=4, token_counts=4))
    thetas = start_grid(7)
    weights = np.random.default_rng(1).integers(0, 3, (7, len(data.log_n))).astype(float)
    f, g = objective_batch(thetas, data.log_n, data.log_d, data.log_loss, weights)
    for i in range(7):
        fi, gi = parametric_objective(thetas[i], data.log_n, data.log_d, data.log_loss, weights=weights[i])
        assert f[i] == pytest.approx(fi, rel=1e-12)
        np.testing.assert_allclose(g[i], gi, rtol=1e-12)


def test_a_term_that_died_out_is_named_wherever_the_optimizer_left_it():
    log_n, log_d = np.log([1e6, 1e7, 1e8]), np.log([2e7, 2e8, 2e9])
    alive = np.log([400.0, 400.0, 1.7]).tolist() + [0.34, 0.28]
    assert dead_terms(np.array(alive), log_n, log_d) == []  # the negative control: every term matters
    # B = 1 at beta = 2 adds 1e-15 of the loss at 2e7 tokens: not at a bound, yet gone.
    assert dead_terms(np.array([alive[0], 0.0, alive[2], 0.34, 2.0]), log_n, log_d) == ["B", "beta"]
