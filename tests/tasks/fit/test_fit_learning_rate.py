"""tasks.fit.learning_rate: the best learning rate per (N, D) and its law in N, lr_opt = k * N^-p."""

import numpy as np
import pandas as pd
import pytest

from tasks.fit.entries import LearningRate
from tasks.fit.learning_rate import fit_learning_rate
from tasks.fit.stats import Bootstrap
from tests.tasks.fit.shapes import check_shape
from tests.tasks.fit.synthetic import law

K, P, CURVATURE = 0.5, 0.3, 0.05  # lr_opt = K * N^-P; loss rises by CURVATURE * (ln lr - ln lr_opt)^2


def lr_runs(sizes=(1e6, 4e6, 1.6e7, 6.4e7, 2.56e8), factors=(0.25, 0.5, 1.0, 2.0, 4.0), seeds=2, noise=1e-3):
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        best = K * n**-P
        for f in factors:
            for seed in range(seeds):
                loss = (law(n, 20 * n) + CURVATURE * np.log(f) ** 2) * np.exp(noise * rng.standard_normal())
                rows.append(
                    {
                        "run_id": f"{n:g}-{f}-{seed}",
                        "n_params": n,
                        "tokens": 20 * n,
                        "lr": best * f,
                        "seed": seed,
                        "val_loss": loss,
                    }
                )
    return pd.DataFrame(rows)


def test_recovers_each_optimum_and_the_law():
    fit = fit_learning_rate(lr_runs(), Bootstrap(200, 0))
    assert fit["status"] == "ok"
    for point in fit["points"]:
        assert point["status"] == "ok" and point["n_lrs"] == 5
        truth = K * point["n_params"] ** -P
        assert point["lr_opt"]["value"] == pytest.approx(truth, rel=0.05)
        assert point["lr_opt"]["lo"] < point["lr_opt"]["value"] < point["lr_opt"]["hi"]
    law_fit = fit["law"]
    assert law_fit["p"]["value"] == pytest.approx(P, abs=0.01)
    assert law_fit["k"]["value"] == pytest.approx(K, rel=0.15)
    assert law_fit["p"]["lo"] < P < law_fit["p"]["hi"]
    # Resamples of the five sizes that draw fewer than three distinct ones (about 10%) have no line.
    assert law_fit["n_points"] == 5 and 160 < fit["bootstrap"]["ok"] < 200
    check_shape(fit, LearningRate, "learning_rate")
    renamed = {("power_law" if k == "law" else k): v for k, v in fit.items()}  # the old name: rejected
    with pytest.raises(AssertionError, match="power_law"):
        check_shape(renamed, LearningRate)


def test_an_optimum_outside_the_swept_rates_is_dropped_and_says_to_widen():
    runs = lr_runs()
    above = lr_runs(sizes=(1e6,), factors=(2.0, 4.0, 8.0))  # the smallest size swept only above its optimum
    runs = pd.concat([runs[runs["n_params"] != 1e6], above], ignore_index=True)
    fit = fit_learning_rate(runs, Bootstrap(50, 0))
    dropped = [p for p in fit["points"] if p["status"] == "dropped"]
    assert len(dropped) == 1 and dropped[0]["n_params"] == 1e6 and "widen" in dropped[0]["reason"]
    assert fit["law"]["status"] == "ok" and fit["law"]["n_points"] == 4


def test_three_rates_with_one_seed_give_an_optimum_without_an_interval():
    fit = fit_learning_rate(lr_runs(factors=(0.5, 1.0, 2.0), seeds=1), Bootstrap(50, 0))
    point = fit["points"][0]
    assert point["lr_opt"]["value"] == pytest.approx(K * 1e6**-P, rel=0.05)
    assert point["lr_opt"]["lo"] is None and point["lr_opt"]["hi"] is None
    # The law still has one: its points are resampled.
    assert fit["law"]["p"]["lo"] < fit["law"]["p"]["hi"]


@pytest.mark.parametrize(
    "runs, words",
    [
        (lr_runs(factors=(0.5, 2.0)), "at most 2 learning rate(s) per (n_params, tokens)"),
        (lr_runs().drop(columns="lr"), "no lr column"),
        (lr_runs(sizes=(1e6, 4e6)), "optima at 2 size(s)"),
    ],
)
def test_too_few_rates_or_sizes_say_why(runs, words):
    fit = fit_learning_rate(runs, Bootstrap(0, 0))
    reason = fit.get("reason") or fit["law"]["reason"]
    assert words in reason
