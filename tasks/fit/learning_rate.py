"""The learning-rate optimum: per (N, D), a quadratic in log(lr) through the sweep's runs; then how
the optimum moves with model size, the law lr_opt = k * N^-p.

Every run (each seed too) is a point of its (N, D)'s quadratic. An optimum is used only when the
quadratic opens upward and its vertex lies within the learning rates swept: one beyond them says
to widen the sweep, not where the optimum is. The bootstrap has two levels: the (N, D) points are
drawn with replacement, and the runs within each (a point with exactly three runs has no residual
and is not resampled within, and its own lr_opt has no interval).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.fit.entries import DROPPED, LAW, OK, LearningRate, LearningRateSkipped, LrPoint
from tasks.fit.stats import (
    Bootstrap,
    Minimum,
    interval,
    parabola_minimum,
    r2,
    resampled_line,
    skipped,
    stratified_counts,
    weighted_line,
)

MIN_LRS = 3  # a quadratic needs three learning rates to have a vertex
MIN_SIZES = 3  # two optima always fit a line exactly
FORM = "lr_opt = k * N^-p"


def fit_learning_rate(runs: pd.DataFrame, boot: Bootstrap) -> LearningRate | LearningRateSkipped:
    if "lr" not in runs or not np.isfinite(runs["lr"].to_numpy(float)).any():
        return skipped("the runs table has no lr column")
    runs = runs[np.isfinite(runs["lr"].to_numpy(float)) & (runs["lr"].to_numpy(float) > 0)]
    keys = runs[["n_params", "tokens"]].to_numpy(float)
    _, labels = np.unique(keys, axis=0, return_inverse=True)
    counts = stratified_counts(boot.rng("learning_rate"), labels.ravel(), boot.resamples)
    points, log_n, log_lr, log_lr_s = [], [], [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels.ravel() == label)
        point, low = _optimum(runs.iloc[members], counts[:, members])
        points.append(point)
        if low is not None:
            log_n.append(np.log(point["n_params"]))
            log_lr.append(low.x)
            log_lr_s.append(low.x_s)
    most = max((p["n_lrs"] for p in points), default=0)
    if most < MIN_LRS:
        return skipped(
            f"at most {most} learning rate(s) per (n_params, tokens); a quadratic in log(lr) needs {MIN_LRS}"
        )
    if not log_n:
        return {
            **skipped("no (n_params, tokens) point has a learning-rate optimum inside its swept range"),
            "points": points,
        }
    entry: LearningRate = {"status": OK, "form": FORM, "points": points}
    if np.unique(log_n).size < MIN_SIZES:
        entry[LAW] = skipped(f"optima at {np.unique(log_n).size} size(s); the power law in N needs {MIN_SIZES}")
        return entry
    log_n, log_lr, log_lr_s = np.array(log_n), np.array(log_lr), np.array(log_lr_s).T  # (resamples, points)
    slope, log_k = (float(v[0]) for v in weighted_line(log_n, log_lr, np.ones((1, len(log_n)))))
    slope_s, log_k_s = resampled_line(log_n, log_lr_s, boot.rng("learning_rate/points"), MIN_SIZES)
    entry[LAW] = {
        "status": OK,
        "form": FORM,
        "k": interval(np.exp(log_k), np.exp(log_k_s)),
        "p": interval(-slope, -slope_s),
        "r2": r2(log_lr, log_lr - (log_k + slope * log_n)),
        "n_points": len(log_n),
    }
    entry["bootstrap"] = boot.info(np.stack([slope_s, log_k_s], axis=1))
    return entry


def _optimum(runs: pd.DataFrame, counts: np.ndarray) -> tuple[LrPoint, Minimum | None]:
    lr, loss = runs["lr"].to_numpy(float), runs["val_loss"].to_numpy(float)
    point = {
        "n_params": float(runs["n_params"].iloc[0]),
        "tokens": float(runs["tokens"].iloc[0]),
        "n_lrs": int(np.unique(lr).size),
        "lrs": sorted(np.unique(lr).tolist()),
    }
    if point["n_lrs"] < MIN_LRS:
        return {
            **point,
            "status": DROPPED,
            "reason": f"{point['n_lrs']} learning rate(s); a quadratic needs {MIN_LRS}",
        }, None
    low = parabola_minimum(np.log(lr), loss, counts)
    if isinstance(low, str):
        why = (
            "the loss is not convex in log(lr) over the swept rates (no minimum)"
            if low == "not convex"
            else f"the best learning rate lies outside the swept range ({lr.min():.3g} to {lr.max():.3g}): widen it"
        )
        return {**point, "status": DROPPED, "reason": why}, None
    (x, x_s), (y, y_s) = low.intervals()
    point |= {"status": OK, "lr_opt": interval(np.exp(x), np.exp(x_s)), "loss_opt": interval(y, y_s)}
    return point, low
