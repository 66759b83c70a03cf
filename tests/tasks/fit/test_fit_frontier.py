"""tasks.fit.frontier: the compute frontier, the loss-vs-compute law, Chinchilla approach 1 and the
compute multiplier between architectures."""

import numpy as np
import pandas as pd
import pytest

from tasks.fit.frontier import compute_multipliers, fit_approach1, fit_loss_vs_compute, frontier, frontier_masks
from tasks.fit.stats import Bootstrap
from tests.tasks.fit.synthetic import TRUE_A, TRUE_G, isoflop_runs, n_opt


def loss_vs_compute_runs(a=30.0, b=0.05, n=12, noise=1e-3, seed=1, worse=True, prefix="f"):
    """Runs on L = a * C^-b; with `worse`, as many again spending 10% more compute for an 8% worse loss."""
    rng = np.random.default_rng(seed)
    flops = np.geomspace(1e15, 1e20, n)
    loss = a * flops**-b * np.exp(noise * rng.standard_normal(n))
    front = pd.DataFrame({"run_id": [f"{prefix}{i}" for i in range(n)], "flops": flops, "val_loss": loss})
    if not worse:
        return front
    bad = pd.DataFrame({"run_id": [f"w{i}" for i in range(n)], "flops": flops * 1.1, "val_loss": loss * 1.08})
    return pd.concat([front, bad], ignore_index=True)


def test_frontier_keeps_only_runs_better_than_all_cheaper_ones():
    flops = np.array([1.0, 2.0, 3.0, 4.0, 3.0])
    loss = np.array([5.0, 6.0, 4.0, 4.5, 3.5])
    assert frontier(flops, loss).tolist() == [0, 4]


def test_frontier_masks_agree_with_the_frontier_of_each_resample():
    rng = np.random.default_rng(0)
    flops, loss = rng.choice([1.0, 2.0, 4.0, 8.0], 20), rng.uniform(1, 5, 20)
    counts = rng.multinomial(20, np.full(20, 0.05), size=30)
    masks = frontier_masks(flops, loss, counts)
    for row, mask in zip(counts, masks):
        drawn = np.flatnonzero(row)
        assert sorted(drawn[frontier(flops[drawn], loss[drawn])]) == sorted(np.flatnonzero(mask))


def test_loss_vs_compute_recovered_on_the_frontier():
    runs = loss_vs_compute_runs()
    law = fit_loss_vs_compute(runs, [1e21], Bootstrap(200, 0))
    fit = law.entry
    assert fit["status"] == "ok"
    assert fit["params"]["b"]["value"] == pytest.approx(0.05, abs=0.002)
    assert fit["params"]["a"]["value"] == pytest.approx(30.0, rel=0.1)
    assert fit["params"]["b"]["lo"] <= 0.05 <= fit["params"]["b"]["hi"]
    assert fit["r2"] > 0.99
    # The same compute spent worse (say a bad learning rate) is not on the frontier and does not pull the fit.
    assert [p["run_id"] for p in fit["points"]] == [f"f{i}" for i in range(12)]
    assert len(fit["band"]["lo"]) == len(fit["band"]["flops"]) == 50
    assert all(lo < hi for lo, hi in zip(fit["band"]["lo"], fit["band"]["hi"]))
    pred = fit["predictions"][0]
    assert pred["loss"]["value"] == pytest.approx(30.0 * 1e21**-0.05, rel=0.05)
    assert pred["perplexity"]["value"] == pytest.approx(np.exp(pred["loss"]["value"]))
    assert pred["perplexity"]["hi"] == pytest.approx(np.exp(pred["loss"]["hi"]), rel=1e-4)  # up to interpolation
    assert fit["bootstrap"]["ok"] == 200


def test_loss_vs_compute_needs_three_frontier_points_and_unequal_losses():
    two = loss_vs_compute_runs(n=2, worse=False)
    assert "need 3" in fit_loss_vs_compute(two, [], Bootstrap(0, 0)).entry["reason"]
    flat = loss_vs_compute_runs(noise=0.0).assign(val_loss=4.0)
    law = fit_loss_vs_compute(flat, [], Bootstrap(0, 0))
    assert law.estimate is None and "losses are equal" in law.entry["reason"]


def test_approach1_recovers_the_allocation_exponent():
    fit = fit_approach1(isoflop_runs(), [1e19, 1e22], Bootstrap(200, 0))
    assert fit["status"] == "ok"
    a, b, g = (fit["exponents"][k] for k in ("a", "b", "G"))
    # Five budgets, nine sizes each a quarter-decade apart: the best size is within an eighth of a decade.
    assert a["value"] == pytest.approx(TRUE_A, abs=0.03)
    assert b["value"] == pytest.approx(1 - a["value"])
    assert a["lo"] <= a["value"] <= a["hi"]
    # G is N_opt extrapolated to C = 1 FLOP, so it moves with a; N_opt amid the budgets is what is pinned down.
    assert g["lo"] < TRUE_G < g["hi"]
    middle, far = fit["predictions"]
    assert middle["n_opt"]["value"] == pytest.approx(n_opt(1e19), rel=0.2)
    assert len(fit["points"]) == 5
    assert 6 * far["n_opt"]["value"] * far["d_opt"]["value"] == pytest.approx(1e22)


def test_approach1_needs_more_than_one_size_on_the_frontier():
    runs = loss_vs_compute_runs(worse=False).assign(n_params=1e8, tokens=lambda t: t["flops"] / 6e8)
    fit = fit_approach1(runs, [1e21], Bootstrap(0, 0))
    assert fit["status"] == "skipped" and "same size" in fit["reason"]


def test_compute_multiplier_between_architectures():
    # `fast` reaches every loss with 4x less compute: L_fast(C) = L_ref(4 C).
    ref = loss_vs_compute_runs(worse=False, seed=3)
    fast = loss_vs_compute_runs(a=30.0 * 4**-0.05, worse=False, seed=4, prefix="m")
    laws = {
        "ref": fit_loss_vs_compute(ref, [], Bootstrap(200, 0, "ref")),
        "fast": fit_loss_vs_compute(fast, [], Bootstrap(200, 0, "fast")),
    }
    out = compute_multipliers(laws, "ref", [1e21, 1e23])
    assert out["reference"] == "ref" and set(out["archs"]) == {"fast"}
    at = out["archs"]["fast"]["at"]
    assert [p["extrapolated"] for p in at] == [False, True, True]
    assert at[0]["flops"] == pytest.approx(1e20)
    for point in at:
        m = point["multiplier"]
        assert m["value"] == pytest.approx(4.0, rel=0.25)
        assert m["lo"] < 4.0 < m["hi"]
    assert at[1]["loss"] == pytest.approx(30.0 * 1e21**-0.05, rel=0.02)


def test_compute_multiplier_without_a_law_says_why():
    laws = {
        "ref": fit_loss_vs_compute(loss_vs_compute_runs(), [], Bootstrap(0, 0)),
        "tiny": fit_loss_vs_compute(loss_vs_compute_runs(n=2, worse=False), [], Bootstrap(0, 0)),
    }
    out = compute_multipliers(laws, "ref", [1e21])
    assert out["archs"]["tiny"]["status"] == "skipped" and "need 3" in out["archs"]["tiny"]["reason"]
