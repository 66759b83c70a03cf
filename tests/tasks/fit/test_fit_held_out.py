"""tasks.fit.held_out: the laws refitted without the largest compute scale predict it."""

import numpy as np
import pytest

from tasks.fit.entries import HeldOut
from tasks.fit.held_out import fit_held_out
from tasks.fit.parametric import start_grid
from tasks.fit.stats import Bootstrap
from tasks.fit.table import prepare
from tests.tasks.fit.shapes import check_shape
from tests.tasks.fit.synthetic import grid_runs, isoflop_runs, law


def test_the_largest_compute_scale_is_held_out_and_predicted():
    runs = prepare(grid_runs()).used
    out = fit_held_out(runs, start_grid(16), Bootstrap(100, 0))
    assert out["status"] == "ok"
    assert out["run_ids"] == ["r5-5"] and out["n_fit_runs"] == 35  # N = 1e9, D = 1e11: the top corner alone
    assert out["flops"] == pytest.approx(6e20)
    par = out["parametric"]
    assert par["status"] == "ok" and par["convergence"] == "converged"
    (point,) = par["points"]
    assert point["observed"] == pytest.approx(law(1e9, 1e11), rel=5e-3)
    assert abs(point["relative_error"]["value"]) < 3e-3  # 0.1% noise, extrapolated 10x in compute
    assert point["predicted"]["lo"] < point["predicted"]["value"] < point["predicted"]["hi"]
    assert par["mean_abs_relative_error"]["value"] == pytest.approx(abs(point["relative_error"]["value"]))
    # L = a C^-b cannot bend towards E: it overshoots the held-out gain, and says so.
    law_check = out["loss_vs_compute"]
    assert law_check["status"] == "ok" and law_check["run_id"] == "r5-5"
    assert law_check["relative_error"]["value"] < -0.05
    check_shape(out, HeldOut, "held_out")


def test_an_isoflop_budget_is_held_out_whole():
    runs = prepare(isoflop_runs((1e17, 1e18, 1e19, 1e20))).used
    out = fit_held_out(runs, start_grid(8), Bootstrap(0, 0))
    top = runs[np.isclose(runs["flops"], 1e20)]
    assert sorted(out["run_ids"]) == sorted(top["run_id"]) and len(out["run_ids"]) == 9
    assert out["loss_vs_compute"]["observed"] == pytest.approx(top["val_loss"].min())


def test_one_compute_scale_leaves_nothing_to_fit():
    runs = prepare(isoflop_runs((1e19,))).used
    out = fit_held_out(runs, start_grid(4), Bootstrap(0, 0))
    assert out == {"status": "skipped", "reason": "every run is at one compute scale: nothing is left to fit on"}


def test_too_little_left_after_holding_out_says_why():
    runs = prepare(grid_runs(sizes=2, token_counts=3)).used
    out = fit_held_out(runs, start_grid(4), Bootstrap(0, 0))
    assert out["status"] == "ok"
    assert (
        out["parametric"]["status"] == "skipped" and "without the largest compute scale" in out["parametric"]["reason"]
    )
