"""tasks.fit.isoflop (Chinchilla approach 2): IsoFLOP parabolas and the power law of their minima."""

import numpy as np
import pytest

from tasks.fit.isoflop import fit_approach2
from tasks.fit.stats import Bootstrap
from tasks.fit.table import prepare
from tests.tasks.fit.synthetic import TRUE_A, TRUE_G, isoflop_runs, n_opt

BUDGETS = (1e17, 1e18, 1e19, 1e20, 1e21)


@pytest.fixture(scope="module")
def fit():
    return fit_approach2(prepare(isoflop_runs(BUDGETS)).used, [1e22], Bootstrap(200, 0))


def test_recovers_the_allocation_exponent_and_each_budgets_optimum(fit):
    assert fit["status"] == "ok"
    a, b, g = (fit["exponents"][k] for k in ("a", "b", "G"))
    # The profile is not a parabola in log N, but its shape is the same at every budget: the vertex is off
    # by the same factor everywhere, so the exponent is exact and G off by that factor (a few percent).
    assert a["value"] == pytest.approx(TRUE_A, abs=0.005)
    assert a["lo"] < TRUE_A < a["hi"] and a["hi"] - a["lo"] < 0.03
    assert b["value"] == pytest.approx(1 - TRUE_A, abs=0.005)
    assert g["value"] == pytest.approx(TRUE_G, rel=0.15)
    assert fit["r2"] > 0.999
    assert [p["status"] for p in fit["profiles"]] == ["ok"] * 5
    for profile, c in zip(fit["profiles"], BUDGETS):
        assert profile["flops"] == pytest.approx(c, rel=1e-9)
        assert profile["n_sizes"] == 9 and len(profile["run_ids"]) == 9
        assert profile["n_opt"]["value"] == pytest.approx(n_opt(c), rel=0.1)
        assert profile["n_opt"]["lo"] < profile["n_opt"]["value"] < profile["n_opt"]["hi"]
    pred = fit["predictions"][0]
    assert pred["n_opt"]["value"] == pytest.approx(n_opt(1e22), rel=0.15)
    assert pred["tokens_per_param"]["value"] == pytest.approx(pred["d_opt"]["value"] / pred["n_opt"]["value"])


def test_profiles_that_do_not_bracket_a_minimum_are_dropped_with_a_reason():
    runs = isoflop_runs(BUDGETS)
    # At the largest budget keep only sizes at least 3x beyond the optimum, and at the smallest two sizes.
    largest, smallest = np.isclose(runs["flops"], 1e21), np.isclose(runs["flops"], 1e17)
    runs = runs[~(largest & (runs["n_params"] < 3 * n_opt(1e21))) & ~(smallest & (runs.index >= 2))]
    fit = fit_approach2(prepare(runs).used, [1e22], Bootstrap(50, 0))
    by_flops = {round(np.log10(p["flops"])): p for p in fit["profiles"]}
    assert by_flops[21]["status"] == "dropped" and "outside the sizes run" in by_flops[21]["reason"]
    assert by_flops[17]["status"] == "dropped" and "2 size(s); a parabola needs 3" in by_flops[17]["reason"]
    assert fit["status"] == "ok"  # three budgets are left
    assert fit["exponents"]["a"]["value"] == pytest.approx(TRUE_A, abs=0.01)


def test_too_few_budgets_skip_the_fit_and_list_the_profiles():
    fit = fit_approach2(prepare(isoflop_runs(BUDGETS[:2])).used, [1e22], Bootstrap(0, 0))
    assert fit["status"] == "skipped"
    assert "2 compute budget(s) with a bracketed minimum" in fit["reason"] and "need 3" in fit["reason"]
    assert [p["status"] for p in fit["profiles"]] == ["ok", "ok"]
