"""Held-out prediction: the laws refitted without the largest compute scale predict it.

This is how the OLMo ladder and Llama 3 test a fitted law before trusting its extrapolation: the
largest budget is what a law is for, and fitting it in hides how well the law extrapolates. The
largest compute scale is the most expensive budget group (tasks.fit.table.budget_groups). Both
L(N, D) (each held-out (N, D) at its best learning rate) and the loss-vs-compute law (the
lowest held-out loss, at its compute) are checked; a relative error is predicted / observed - 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.fit.entries import (
    LOSS_VS_COMPUTE,
    OK,
    PARAMETRIC,
    HeldOut,
    HeldOutLossVsCompute,
    HeldOutParametric,
    Skipped,
)
from tasks.fit.frontier import fit_loss_vs_compute
from tasks.fit.objective import log_predict
from tasks.fit.parametric import fit_law
from tasks.fit.stats import Bootstrap, interval, skipped
from tasks.fit.table import best_lr_points, budget_groups


def fit_held_out(runs: pd.DataFrame, starts: np.ndarray, boot: Bootstrap) -> HeldOut | Skipped:
    labels = budget_groups(runs["flops"].to_numpy(float))
    top = labels == labels.max() if len(labels) else np.zeros(0, bool)
    if not (~top).any():
        return skipped("every run is at one compute scale: nothing is left to fit on")
    train, test = runs[~top], runs[top]
    boot = Bootstrap(boot.resamples, boot.seed, f"{boot.key}/held-out")
    return {
        "status": OK,
        "flops": float(np.exp(np.log(test["flops"]).mean())),
        "run_ids": list(test["run_id"]),
        "n_fit_runs": len(train),
        PARAMETRIC: _parametric(train, test, starts, boot),
        LOSS_VS_COMPUTE: _loss_vs_compute(train, test, boot),
    }


def _parametric(
    train: pd.DataFrame, test: pd.DataFrame, starts: np.ndarray, boot: Bootstrap
) -> HeldOutParametric | Skipped:
    law = fit_law(best_lr_points(train), starts, boot)
    if isinstance(law, str):
        return skipped(f"L(N, D) without the largest compute scale: {law}")
    points = best_lr_points(test)
    n, d, observed = (points[c].to_numpy(float) for c in ("n_params", "tokens", "val_loss"))
    predicted = np.exp(log_predict(law.theta, np.log(n), np.log(d)))
    predicted_s = np.exp(log_predict(law.samples.T[:, :, None], np.log(n), np.log(d)))  # (resamples, points)
    error, error_s = predicted / observed - 1, predicted_s / observed - 1
    return {
        "status": OK,
        "convergence": law.convergence["state"],
        "points": [
            {
                "n_params": n[i],
                "tokens": d[i],
                "run_ids": list(points["run_ids"].iloc[i]),
                "observed": observed[i],
                "predicted": interval(predicted[i], predicted_s[:, i]),
                "relative_error": interval(error[i], error_s[:, i]),
            }
            for i in range(len(points))
        ],
        "mean_abs_relative_error": interval(np.abs(error).mean(), np.abs(error_s).mean(axis=1)),
    }


def _loss_vs_compute(train: pd.DataFrame, test: pd.DataFrame, boot: Bootstrap) -> HeldOutLossVsCompute | Skipped:
    law = fit_loss_vs_compute(train, [], boot)
    if law.estimate is None:
        return skipped(f"loss vs compute without the largest compute scale: {law.entry['reason']}")
    best = test.loc[test["val_loss"].idxmin()]
    log_c = np.log(float(best["flops"]))
    predicted = float(np.exp(law.estimate[0, 1] - law.estimate[0, 0] * log_c))
    predicted_s = np.exp(law.samples[:, 1] - law.samples[:, 0] * log_c)
    observed = float(best["val_loss"])
    return {
        "status": OK,
        "run_id": best["run_id"],
        "flops": float(best["flops"]),
        "observed": observed,
        "predicted": interval(predicted, predicted_s),
        "relative_error": interval(predicted / observed - 1, predicted_s / observed - 1),
    }
