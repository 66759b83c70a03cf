"""tasks.fit: recovery of known laws, exclusions, skipped fits, input errors, the objective's gradient."""

import json

import numpy as np
import pandas as pd
import pytest

from tasks.fit import fit_file, fit_runs, frontier, parametric_objective

# Besiroglu et al. 2024's refit of Chinchilla, rounded.
E, A, ALPHA, B, BETA = 1.8, 400.0, 0.34, 2000.0, 0.37
BUDGETS = [1e20, 1e22]


def chinchilla_runs(sizes: int = 6, token_counts: int = 6, noise: float = 1e-3, seed: int = 0) -> pd.DataFrame:
    """Runs on a grid of N in 1e6..1e9 and D in 1e8..1e11, loss from the law above times exp(noise * z)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(np.geomspace(1e6, 1e9, sizes)):
        for j, d in enumerate(np.geomspace(1e8, 1e11, token_counts)):
            loss = (E + A / n**ALPHA + B / d**BETA) * np.exp(noise * rng.standard_normal())
            rows.append({"run_id": f"r{i}-{j}", "name": f"t-{i}-{j}", "arch": "transformer++", "n_params": n,
                         "tokens": d, "lr": 1e-3, "flops": 6 * n * d, "val_loss": loss, "status": "completed"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def chinchilla_fit():
    return fit_runs(chinchilla_runs(), BUDGETS)


def test_parametric_fit_recovers_known_law(chinchilla_fit):
    fit = chinchilla_fit["parametric"]["transformer++"]
    assert fit["status"] == "ok"
    p = fit["params"]
    # 0.1% noise on 36 runs: exponents to 0.01, E to 1%, the prefactors (strongly tied to the exponents) to 10%.
    assert p["alpha"]["value"] == pytest.approx(ALPHA, abs=0.01)
    assert p["beta"]["value"] == pytest.approx(BETA, abs=0.01)
    assert p["E"]["value"] == pytest.approx(E, rel=0.01)
    assert p["A"]["value"] == pytest.approx(A, rel=0.1)
    assert p["B"]["value"] == pytest.approx(B, rel=0.1)
    for name, true in (("alpha", ALPHA), ("beta", BETA), ("E", E)):
        assert p[name]["lo"] <= p[name]["value"] <= p[name]["hi"]
        assert p[name]["hi"] - p[name]["lo"] < 0.1 * true
    conv = fit["convergence"]
    assert conv["success"] and conv["converged"] and conv["on_bound"] == []
    assert fit["bootstrap"]["ok"] == fit["bootstrap"]["resamples"]


def test_compute_optimum_is_the_minimum_of_the_iso_flop_curve(chinchilla_fit):
    fit = chinchilla_fit["parametric"]["transformer++"]
    alpha, beta = fit["params"]["alpha"]["value"], fit["params"]["beta"]["value"]
    assert fit["exponents"]["a"]["value"] == pytest.approx(beta / (alpha + beta))
    assert fit["exponents"]["b"]["value"] == pytest.approx(alpha / (alpha + beta))

    def loss(n, d):
        p = fit["params"]
        return p["E"]["value"] + p["A"]["value"] / n**alpha + p["B"]["value"] / d**beta

    for budget, pred in zip(BUDGETS, fit["predictions"]):
        n, d = pred["n_opt"]["value"], pred["d_opt"]["value"]
        assert pred["flops"] == budget
        assert 6 * n * d == pytest.approx(budget)
        assert pred["tokens_per_param"]["value"] == pytest.approx(d / n)
        assert pred["loss"]["value"] == pytest.approx(loss(n, d))
        for shift in (0.8, 1.25):
            assert loss(n * shift, d / shift) > pred["loss"]["value"]


def test_output_is_strict_json(chinchilla_fit):
    assert json.loads(json.dumps(chinchilla_fit, allow_nan=False)) == chinchilla_fit
    assert set(chinchilla_fit) == {"n_runs", "n_used", "excluded", "notes", "budgets", "power_law", "parametric"}


def test_power_law_recovered_on_the_frontier():
    rng = np.random.default_rng(1)
    flops = np.geomspace(1e15, 1e20, 12)
    loss = 30.0 * flops**-0.05 * np.exp(1e-3 * rng.standard_normal(12))
    front = pd.DataFrame({"run_id": [f"f{i}" for i in range(12)], "flops": flops, "val_loss": loss})
    # The same compute spent worse (say a bad learning rate) must not pull the fit.
    worse = pd.DataFrame({"run_id": [f"w{i}" for i in range(12)], "flops": flops * 1.1, "val_loss": loss * 1.08})
    runs = pd.concat([front, worse], ignore_index=True).assign(n_params=1e7, tokens=lambda t: t["flops"] / 6e7)

    fit = fit_runs(runs, [1e21], starts=8)["power_law"]["all"]

    assert fit["status"] == "ok"
    assert fit["params"]["b"]["value"] == pytest.approx(0.05, abs=0.002)
    assert fit["params"]["a"]["value"] == pytest.approx(30.0, rel=0.1)
    assert fit["params"]["b"]["lo"] <= 0.05 <= fit["params"]["b"]["hi"]
    assert fit["r2"] > 0.99
    assert [p["run_id"] for p in fit["points"]] == list(front["run_id"])
    assert len(fit["band"]["lo"]) == len(fit["band"]["flops"])
    assert fit["predictions"][0]["loss"] == pytest.approx(30.0 * 1e21**-0.05, rel=0.05)


def test_frontier_keeps_only_runs_better_than_all_cheaper_ones():
    flops = np.array([1.0, 2.0, 3.0, 4.0, 3.0])
    loss = np.array([5.0, 6.0, 4.0, 4.5, 3.5])
    assert frontier(flops, loss).tolist() == [0, 4]


def test_unfinished_and_non_finite_runs_are_listed_not_fitted():
    runs = chinchilla_runs(sizes=3, token_counts=3)
    runs.loc[0, "status"] = "diverged"
    runs.loc[1, "status"] = "failed"
    runs.loc[2, "status"] = "pending"
    runs.loc[3, "val_loss"] = np.nan
    runs.loc[4, "val_loss"] = np.inf

    fits = fit_runs(runs, BUDGETS, starts=8)

    reasons = {e["run_id"]: e["reason"] for e in fits["excluded"]}
    assert reasons == {"r0-0": "status diverged", "r0-1": "status failed", "r0-2": "status pending",
                       "r1-0": "val_loss is not finite", "r1-1": "val_loss is not finite"}
    assert {e["name"] for e in fits["excluded"]} == {"t-0-0", "t-0-1", "t-0-2", "t-1-0", "t-1-1"}
    assert (fits["n_runs"], fits["n_used"]) == (9, 4)
    used = {p["run_id"] for p in fits["power_law"]["transformer++"].get("points", [])}
    assert not used & set(reasons)


def test_too_few_runs_skip_the_fits_with_a_reason():
    fits = fit_runs(chinchilla_runs(sizes=2, token_counts=1), BUDGETS)
    for kind in ("power_law", "parametric"):
        fit = fits[kind]["transformer++"]
        assert fit["status"] == "skipped"
        assert "need" in fit["reason"]


def test_one_tokens_per_parameter_ratio_skips_the_parametric_fit():
    n = np.geomspace(1e6, 1e8, 6)
    runs = pd.DataFrame({"n_params": n, "tokens": 20 * n, "val_loss": E + A / n**ALPHA + B / (20 * n) ** BETA})

    fits = fit_runs(runs, BUDGETS)

    assert fits["parametric"]["all"]["status"] == "skipped"
    assert "tokens-per-parameter" in fits["parametric"]["all"]["reason"]
    assert fits["power_law"]["all"]["status"] == "ok"
    assert any("6 * n_params * tokens" in note for note in fits["notes"])


@pytest.mark.parametrize("column", ["n_params", "tokens", "val_loss"])
def test_missing_column_is_named(column):
    with pytest.raises(ValueError, match=column):
        fit_runs(chinchilla_runs(sizes=2, token_counts=2).drop(columns=column), BUDGETS)


def test_fit_file_reads_csv_writes_json_and_names_the_file(tmp_path):
    source = tmp_path / "runs.csv"
    chinchilla_runs(sizes=3, token_counts=3).to_csv(source, index=False)
    out = tmp_path / "fits" / "fits.json"

    fits = fit_file(source, out, BUDGETS, starts=8)

    assert json.loads(out.read_text()) == fits
    assert fits["source"] == str(source)
    assert [p.name for p in out.parent.iterdir()] == ["fits.json"]

    broken = tmp_path / "broken.parquet"
    chinchilla_runs(sizes=2, token_counts=2).drop(columns="tokens").to_parquet(broken)
    with pytest.raises(ValueError, match=r"broken\.parquet.*tokens"):
        fit_file(broken, tmp_path / "never.json", BUDGETS)


@pytest.mark.parametrize("theta", [(6.0, 7.6, 0.59, 0.34, 0.37), (3.0, 9.0, -0.5, 0.2, 0.5)])
def test_objective_gradient_matches_finite_differences(theta):
    runs = chinchilla_runs(sizes=4, token_counts=4, noise=2e-3)
    log_n, log_d, log_loss = (np.log(runs[c].to_numpy()) for c in ("n_params", "tokens", "val_loss"))
    theta = np.array(theta)
    _, grad = parametric_objective(theta, log_n, log_d, log_loss)
    step = 1e-7
    numeric = np.array([
        (parametric_objective(theta + step * e, log_n, log_d, log_loss)[0]
         - parametric_objective(theta - step * e, log_n, log_d, log_loss)[0]) / (2 * step)
        for e in np.eye(5)
    ])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-10)
