"""Chinchilla approach 2: IsoFLOP profiles.

Runs are grouped by compute (tasks.fit.table.budget_groups). At each compute budget the final
loss (best learning rate per (N, D)) is fitted by a parabola in log N; its vertex is that budget's
N_opt and lowest loss. A budget is used only when the parabola opens upward and its vertex lies
within the sizes run there: an extrapolated vertex says where the minimum might be, not where it
was seen. Then N_opt = G * C^a through the vertices, and D_opt = C / (6 N_opt).

The bootstrap has two levels: the budgets are drawn with replacement, and within each budget its
points, so a profile keeps its sizes (a profile of exactly three sizes has no residual and is
not resampled within).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.fit.entries import DROPPED, OK, Approach2, Approach2Skipped, Profile
from tasks.fit.stats import (
    Bootstrap,
    interval,
    losses_equal,
    parabola_minimum,
    r2,
    resampled_line,
    skipped,
    stratified_counts,
    weighted_line,
)
from tasks.fit.table import best_lr_points, budget_groups

MIN_SIZES = 3  # a parabola through three points has no residual, but it has a vertex
MIN_BUDGETS = 3  # two vertices always fit a line exactly
FORM = "N_opt = G * C^a, D_opt = C / (6 N_opt), so b = 1 - a"


def fit_approach2(runs: pd.DataFrame, budgets: list[float], boot: Bootstrap) -> Approach2 | Approach2Skipped:
    points = best_lr_points(runs)
    if reason := losses_equal(points["val_loss"].to_numpy(float)):
        return skipped(reason)
    labels = budget_groups(points["flops"].to_numpy(float))
    counts = stratified_counts(boot.rng("approach2"), labels, boot.resamples)
    profiles, log_c, log_n_opt, log_n_opt_s = [], [], [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        profile, vertex, vertex_s = _profile(points.iloc[members], counts[:, members])
        profiles.append(profile)
        if vertex is not None:
            log_c.append(np.log(profile["flops"]))
            log_n_opt.append(vertex)
            log_n_opt_s.append(vertex_s)
    used = sum(p["status"] == OK for p in profiles)
    if used < MIN_BUDGETS:
        multi = sum(p["n_sizes"] >= MIN_SIZES for p in profiles)
        return {
            **skipped(
                f"{used} compute budget(s) with a bracketed minimum ({len(profiles)} budgets, "
                f"{multi} with {MIN_SIZES}+ sizes); need {MIN_BUDGETS}"
            ),
            "profiles": profiles,
        }
    # (budgets,), (budgets,), (resamples, budgets)
    log_c, log_n_opt, log_n_opt_s = np.array(log_c), np.array(log_n_opt), np.array(log_n_opt_s).T
    a, log_g = (float(v[0]) for v in weighted_line(log_c, log_n_opt, np.ones((1, len(log_c)))))
    a_s, log_g_s = resampled_line(log_c, log_n_opt_s, boot.rng("approach2/budgets"), MIN_BUDGETS)
    predictions = []
    for c in budgets:
        n, n_s = np.exp(log_g + a * np.log(c)), np.exp(log_g_s + a_s * np.log(c))
        d, d_s = c / (6 * n), c / (6 * n_s)
        predictions.append(
            {
                "flops": c,
                "n_opt": interval(n, n_s),
                "d_opt": interval(d, d_s),
                "tokens_per_param": interval(d / n, d_s / n_s),
            }
        )
    return {
        "status": OK,
        "method": "Chinchilla approach 2: a parabola in log N per compute budget (IsoFLOP profile)",
        "form": FORM,
        "exponents": {
            "a": interval(a, a_s),
            "b": interval(1 - a, 1 - a_s),
            "G": interval(np.exp(log_g), np.exp(log_g_s)),
        },
        "r2": r2(log_n_opt, log_n_opt - (log_g + a * log_c)),
        "profiles": profiles,
        "predictions": predictions,
        "bootstrap": boot.info(np.stack([a_s, log_g_s], axis=1)),
    }


def _profile(points: pd.DataFrame, counts: np.ndarray) -> tuple[Profile, float | None, np.ndarray | None]:
    """One budget's entry, its vertex log N_opt and the vertex per resample (NaN where not a bracketed minimum)."""
    n, loss = points["n_params"].to_numpy(float), points["val_loss"].to_numpy(float)
    flops = float(np.exp(np.log(points["flops"].to_numpy(float)).mean()))
    entry = {
        "flops": flops,
        "n_sizes": int(np.unique(n).size),
        "run_ids": [r for ids in points["run_ids"] for r in ids],
    }
    if entry["n_sizes"] < MIN_SIZES:
        return (
            {**entry, "status": DROPPED, "reason": f"{entry['n_sizes']} size(s); a parabola needs {MIN_SIZES}"},
            None,
            None,
        )
    low = parabola_minimum(np.log(n), loss, counts)
    if isinstance(low, str):
        why = (
            "the loss is not convex in log N here (no minimum)"
            if low == "not convex"
            else f"the minimum lies outside the sizes run ({n.min():.3g} to {n.max():.3g} parameters)"
        )
        return {**entry, "status": DROPPED, "reason": why}, None, None
    (x, x_s), (y, y_s) = low.intervals()
    entry |= {"status": OK, "n_opt": interval(np.exp(x), np.exp(x_s)), "loss_min": interval(y, y_s)}
    return entry, low.x, low.x_s
