"""Scaling-law fits of a sweep's runs table: loss vs compute, and L(N, D).

Only `n_params`, `tokens` and `val_loss` are required; `flops`, `arch`, `status`,
`run_id`, `name`, `lr` are used when present. Per architecture (one group 'all' when
the table has no `arch` column) two laws are fitted:

1. power_law: L(C) = a * C^-b through the compute frontier (runs whose final val_loss
   is below that of every run of at most the same compute), least squares in log-log.
2. parametric: L(N, D) = E + A/N^alpha + B/D^beta, Chinchilla approach 3 (Hoffmann et
   al. 2022, sec. 3.3 and app. D.2): summed Huber loss on log L, the prediction taken
   through log-sum-exp, L-BFGS-B from a grid of starts. From it, the compute-optimal
   N, D and loss at each budget C = 6ND.

Intervals are 95% bootstrap intervals over runs. Use `fit_file(runs.parquet, fits.json,
budgets)` on a finished sweep, or `fit_runs(table, budgets)` on a DataFrame.

Output (JSON). An interval is {"value", "lo", "hi"}; lo/hi are the 2.5/97.5% bootstrap
percentiles, null when no resample could be fitted. Non-finite numbers are written as null.

    {"n_runs": rows in the table, "n_used": rows fitted,
     "excluded": [{"run_id", "name", "reason"}],
     "notes": [str],                        # choices made for this table, in words
     "budgets": [FLOPs],
     "source": path,                        # fit_file only
     "power_law": {arch: {
         "status": "ok" | "skipped", "reason": str,          # reason when skipped
         "form": "L = a * C^-b",
         "params": {"a": interval, "b": interval},
         "r2": R^2 of log L on the frontier,
         "points": [{"run_id", "flops", "val_loss"}],       # the frontier
         "band": {"flops": [...], "lo": [...], "hi": [...]}, # 95% band of L(C)
         "offset": {"E", "a", "b", "r2", "success"} | null,  # L = E + a*C^-b, 5+ points, for comparison
         "predictions": [{"flops", "loss"}],                 # extrapolated to the budgets
         "bootstrap": {"resamples", "ok", "seed"}}},
     "parametric": {arch: {
         "status", "reason",
         "params": {"E", "A", "B", "alpha", "beta": interval},
         "exponents": {"a": interval, "b": interval},        # N_opt ~ C^a, D_opt ~ C^b
         "convergence": {"success", "message", "iterations", "objective", "max_abs_grad",
                         "on_bound": [names], "starts", "converged"},   # converged: success, no bound
         "points": [{"run_ids", "n_params", "tokens", "val_loss", "predicted"}],  # best lr per (N, D)
         "residual_rms": RMS of log(predicted / observed),
         "predictions": [{"flops", "n_opt", "d_opt", "tokens_per_param", "loss": interval}],
         "bootstrap": {"resamples", "ok", "seed"}}}}
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, minimize
from threadpoolctl import threadpool_limits

REQUIRED = ("n_params", "tokens", "val_loss")
HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, app. D.2
SEED = 0
POWER_LAW_RESAMPLES = 200
PARAMETRIC_RESAMPLES = 100
MIN_FRONTIER_POINTS = 3  # two points always fit a line exactly
MIN_OFFSET_POINTS = 5  # three parameters, two degrees of freedom left
MIN_PARAMETRIC_POINTS = 5  # five parameters
MIN_DISTINCT = 3  # E, A and alpha need three sizes to be told apart (likewise D)
COLLINEAR_LOG_STD = 0.05  # log D within 5% of a function of log N: beta cannot be told from alpha

# theta = (log A, log B, log E, alpha, beta). The bounds only fence off degenerate
# directions (A -> inf with alpha -> inf); a fit that reaches one is reported, not trusted.
THETA_NAMES = ("A", "B", "E", "alpha", "beta")
BOUNDS = ((-30.0, 100.0), (-30.0, 100.0), (-10.0, 5.0), (0.0, 4.0), (0.0, 4.0))
# Chinchilla's grid of initialisations (app. D.2), a and b in [0, 25], e in [-1, 1.5].
START_AXES = (
    np.arange(0.0, 26.0, 5.0),
    np.arange(0.0, 26.0, 5.0),
    np.arange(-1.0, 1.51, 0.5),
    np.arange(0.0, 2.51, 0.5),
    np.arange(0.0, 2.51, 0.5),
)
LBFGS_OPTIONS = {"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000, "maxfun": 20000}


def fit_file(runs_path, out_path, budgets, starts: int = 64) -> dict:
    """Fits the runs table at `runs_path` (.parquet or .csv) and writes the JSON to `out_path`."""
    runs_path, out_path = Path(runs_path), Path(out_path)
    table = pd.read_csv(runs_path) if runs_path.suffix == ".csv" else pd.read_parquet(runs_path)
    try:
        fits = fit_runs(table, budgets, starts)
    except ValueError as err:
        raise ValueError(f"{runs_path}: {err}") from err
    fits["source"] = str(runs_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # A reader (the report task, a second flow run) never sees half a file.
    with tempfile.NamedTemporaryFile("w", dir=out_path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(fits, tmp, indent=2, allow_nan=False)
    os.replace(tmp.name, out_path)
    return fits


def fit_runs(runs: pd.DataFrame, budgets: list[float], starts: int = 64) -> dict:
    """Both fits for every architecture of `runs`; the layout is in the module docstring."""
    table, notes = _prepare(runs)
    used = table[table["reason"].isna()]
    excluded = [
        {"run_id": str(r.run_id), "name": None if pd.isna(r.name_) else str(r.name_), "reason": r.reason}
        for r in table[table["reason"].notna()].itertuples()
    ]
    archs = sorted(table["arch"].unique())
    budgets = [float(c) for c in budgets]
    # L-BFGS-B calls BLAS on 5-parameter problems ~10^5 times; threaded OpenBLAS then only
    # contends for cores (5 s became 40 s on a busy 2-core machine).
    with threadpool_limits(limits=1, user_api="blas"):
        parametric = {a: _fit_parametric(used[used["arch"] == a], budgets, starts) for a in archs}
    if "lr" in used and (used.groupby(["arch", "n_params", "tokens"])["lr"].nunique() > 1).any():
        notes.append("L(N, D) uses, at each (n_params, tokens), the learning rate with the lowest val_loss (seeds averaged).")
    return _clean({
        "n_runs": len(table),
        "n_used": len(used),
        "excluded": excluded,
        "notes": notes,
        "budgets": budgets,
        "power_law": {a: _fit_power_law(used[used["arch"] == a], budgets) for a in archs},
        "parametric": parametric,
    })


def _prepare(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    missing = [c for c in REQUIRED if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table lacks column(s) {', '.join(missing)} (fits need {', '.join(REQUIRED)})")
    table = runs.reset_index(drop=True).copy()
    notes = []
    derived_flops = 6.0 * table["n_params"] * table["tokens"]  # Kaplan et al. 2020, C = 6ND
    if "flops" not in table:
        table["flops"] = derived_flops
        notes.append("The runs table has no flops column: compute is 6 * n_params * tokens.")
    elif table["flops"].isna().any():
        notes.append(f"{int(table['flops'].isna().sum())} run(s) lack flops: 6 * n_params * tokens is used for them.")
        table["flops"] = table["flops"].fillna(derived_flops)
    if "status" not in table:
        table["status"] = "completed"
        notes.append("The runs table has no status column: every run with a finite val_loss is taken as completed.")
    table["arch"] = table["arch"].fillna("unknown").astype(str) if "arch" in table else "all"
    table["run_id"] = table["run_id"].astype(str) if "run_id" in table else table.index.astype(str)
    table["name_"] = table["name"] if "name" in table else None
    table["reason"] = [_exclusion(r) for r in table.itertuples()]
    return table, notes


def _exclusion(run) -> str | None:
    if run.status != "completed":
        return f"status {run.status}"
    if not np.isfinite(run.val_loss):
        return "val_loss is not finite"
    if run.val_loss <= 0:
        return "val_loss is not positive"
    if not all(np.isfinite(v) and v > 0 for v in (run.n_params, run.tokens, run.flops)):
        return "n_params, tokens or flops is not a positive number"
    return None


# Fit 1: loss vs compute on the frontier.


def frontier(flops: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the runs with a lower loss than every run of at most the same compute, by compute."""
    best, keep = np.inf, []
    for i in np.lexsort((loss, flops)):
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.array(keep, dtype=int)


def _loglog(flops: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.log(flops), np.log(loss), 1)
    return float(np.exp(intercept)), float(-slope)


def _fit_power_law(runs: pd.DataFrame, budgets: list[float]) -> dict:
    flops, loss = runs["flops"].to_numpy(float), runs["val_loss"].to_numpy(float)
    front = frontier(flops, loss)
    if len(front) < MIN_FRONTIER_POINTS:
        return _skipped(f"{len(front)} run(s) on the compute frontier ({len(runs)} completed); need {MIN_FRONTIER_POINTS}")
    a, b = _loglog(flops[front], loss[front])
    log_resid = np.log(loss[front]) - np.log(a * flops[front] ** -b)
    rng = np.random.default_rng(SEED)
    samples = []
    for _ in range(POWER_LAW_RESAMPLES):
        pick = rng.integers(0, len(runs), len(runs))
        sub = frontier(flops[pick], loss[pick])
        if np.unique(flops[pick][sub]).size >= MIN_FRONTIER_POINTS:
            samples.append(_loglog(flops[pick][sub], loss[pick][sub]))
    samples = np.array(samples).reshape(-1, 2)
    grid = np.geomspace(flops[front].min() / 2, flops[front].max() * 2, 50)
    curves = samples[:, :1] * grid ** -samples[:, 1:]  # (resamples, grid)
    return {
        "status": "ok",
        "form": "L = a * C^-b",
        "params": {"a": _interval(a, samples[:, 0]), "b": _interval(b, samples[:, 1])},
        "r2": _r2(np.log(loss[front]), log_resid),
        "points": [{"run_id": runs["run_id"].iloc[i], "flops": flops[i], "val_loss": loss[i]} for i in front],
        "band": {"flops": grid, "lo": _percentile(curves, 2.5, axis=0), "hi": _percentile(curves, 97.5, axis=0)},
        "offset": _offset_fit(flops[front], loss[front]) if len(front) >= MIN_OFFSET_POINTS else None,
        "predictions": [{"flops": c, "loss": a * c**-b} for c in budgets],
        "bootstrap": {"resamples": POWER_LAW_RESAMPLES, "ok": len(samples), "seed": SEED},
    }


def _offset_fit(flops: np.ndarray, loss: np.ndarray) -> dict:
    # C is scaled to its geometric mean so a stays O(1) during the search.
    c_ref = np.exp(np.log(flops).mean())
    x, y = flops / c_ref, np.log(loss)

    def residuals(p):
        e, log_a, b = p
        return np.log(e + np.exp(log_a) * x**-b) - y

    lowest = loss.min()
    res = least_squares(residuals, [lowest / 2, np.log(lowest / 2), 0.1], bounds=([0, -np.inf, 0], [lowest, np.inf, 5]))
    e, log_a, b = res.x
    return {"E": e, "a": np.exp(log_a) * c_ref**b, "b": b, "r2": _r2(y, res.fun), "success": bool(res.success)}


# Fit 2: L(N, D), Chinchilla approach 3.


def parametric_objective(theta, log_n, log_d, log_loss, delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Summed Huber loss between log L(N, D) and the observed log loss, and its gradient in theta.

    theta = (log A, log B, log E, alpha, beta); log L = LSE(log A - alpha log N, log B - beta log D, log E).
    """
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, runs)
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    resid = top + np.log(total) - log_loss
    weights /= total  # d log L / d term
    size = np.abs(resid)
    huber = np.where(size <= delta, 0.5 * resid**2, delta * (size - 0.5 * delta))
    slope = np.clip(resid, -delta, delta)
    grad = np.array([slope @ weights[0], slope @ weights[1], slope @ weights[2],
                     -(slope * weights[0]) @ log_n, -(slope * weights[1]) @ log_d])
    return float(huber.sum()), grad


def start_grid(count: int) -> np.ndarray:
    """`count` starting points drawn without replacement (fixed seed) from Chinchilla's grid, in grid order."""
    grid = np.array(list(itertools.product(*START_AXES)))
    if count >= len(grid):
        return grid
    return grid[np.sort(np.random.default_rng(SEED).choice(len(grid), count, replace=False))]


def _minimise(starts: np.ndarray, log_n, log_d, log_loss):
    best = None
    for x0 in starts:
        res = minimize(parametric_objective, x0, args=(log_n, log_d, log_loss), jac=True,
                       method="L-BFGS-B", bounds=BOUNDS, options=LBFGS_OPTIONS)
        if best is None or res.fun < best.fun:
            best = res
    return best


def _points(runs: pd.DataFrame) -> pd.DataFrame:
    """One point per (N, D): seeds averaged, then the best learning rate."""
    keys = ["n_params", "tokens"]
    lr_keys = keys + (["lr"] if "lr" in runs else [])
    per_lr = runs.groupby(lr_keys, dropna=False).agg(val_loss=("val_loss", "mean"), run_ids=("run_id", list)).reset_index()
    return per_lr.loc[per_lr.groupby(keys)["val_loss"].idxmin()].sort_values(keys).reset_index(drop=True)


def _identifiable(n: np.ndarray, d: np.ndarray) -> str | None:
    if len(n) < MIN_PARAMETRIC_POINTS:
        return f"{len(n)} distinct (n_params, tokens) point(s); need {MIN_PARAMETRIC_POINTS}"
    if np.unique(n).size < MIN_DISTINCT or np.unique(d).size < MIN_DISTINCT:
        return f"{np.unique(n).size} distinct n_params and {np.unique(d).size} distinct tokens; need {MIN_DISTINCT} of each"
    slope, intercept = np.polyfit(np.log(n), np.log(d), 1)
    if np.std(np.log(d) - slope * np.log(n) - intercept) < COLLINEAR_LOG_STD:
        return "tokens are a fixed function of n_params (one tokens-per-parameter ratio?): alpha and beta cannot be separated"
    return None


def _fit_parametric(runs: pd.DataFrame, budgets: list[float], starts: int) -> dict:
    points = _points(runs)
    n, d, loss = (points[c].to_numpy(float) for c in ("n_params", "tokens", "val_loss"))
    reason = _identifiable(n, d)
    if reason:
        return _skipped(reason)
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    grid = start_grid(starts)
    best = _minimise(grid, log_n, log_d, log_loss)
    # Per resample, the full fit's optimum (a warm start: it won in ~97% of resamples on
    # synthetic sweeps) and two spread grid starts in case the resample moved the basin.
    boot_starts = np.vstack([best.x, grid[:: max(1, len(grid) // 2)][:2]])
    rng = np.random.default_rng(SEED)
    samples = []
    for _ in range(PARAMETRIC_RESAMPLES):
        pick = rng.integers(0, len(n), len(n))
        # With no more distinct points than parameters the warm start already fits a resample
        # exactly, and such resamples would shrink the interval to a point.
        if np.unique(pick).size > len(THETA_NAMES) and _identifiable(n[pick], d[pick]) is None:
            samples.append(_minimise(boot_starts, log_n[pick], log_d[pick], log_loss[pick]).x)
    samples = np.array(samples).reshape(-1, 5)
    on_bound = [name for name, x, (lo, hi) in zip(THETA_NAMES, best.x, BOUNDS)
                if min(x - lo, hi - x) <= 1e-6 * (hi - lo)]
    predicted = np.exp(_log_predict(best.x, log_n, log_d))
    theta_values = _natural(best.x)
    theta_samples = _natural(samples.T)
    optimum, optimum_samples = _optimum(best.x, budgets), _optimum(samples.T, budgets)
    return {
        "status": "ok",
        "params": {k: _interval(theta_values[k], theta_samples[k]) for k in ("E", "A", "B", "alpha", "beta")},
        "exponents": {k: _interval(theta_values[k], theta_samples[k]) for k in ("a", "b")},
        "convergence": {
            "success": best.success, "message": best.message, "iterations": best.nit, "objective": best.fun,
            "max_abs_grad": np.abs(best.jac).max(), "on_bound": on_bound, "starts": len(grid),
            "converged": bool(best.success) and not on_bound,
        },
        "points": [
            {"run_ids": list(r.run_ids), "n_params": r.n_params, "tokens": r.tokens, "val_loss": r.val_loss, "predicted": p}
            for r, p in zip(points.itertuples(), predicted)
        ],
        "residual_rms": float(np.sqrt(np.mean((np.log(predicted) - log_loss) ** 2))),
        "predictions": [
            {"flops": c, **{k: _interval(optimum[k][i], optimum_samples[k][i]) for k in optimum}}
            for i, c in enumerate(budgets)
        ],
        "bootstrap": {"resamples": PARAMETRIC_RESAMPLES, "ok": len(samples), "seed": SEED},
    }


def _log_predict(theta, log_n, log_d):
    a, b, e, alpha, beta = theta
    return np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)


def _natural(theta) -> dict:
    """A, B, E, alpha, beta and the compute-optimal exponents a, b from theta (a vector or (5, k) array)."""
    a, b, e, alpha, beta = theta
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"A": np.exp(a), "B": np.exp(b), "E": np.exp(e), "alpha": alpha, "beta": beta,
                "a": beta / (alpha + beta), "b": alpha / (alpha + beta)}


def _optimum(theta, budgets: list[float]) -> dict:
    """N_opt, D_opt, D/N and loss at each budget under C = 6ND (Hoffmann et al. 2022, eq. 4); arrays (budgets, ...)."""
    a, b, e, alpha, beta = (np.asarray(t, float) for t in theta)
    log_c6 = np.log(np.asarray(budgets, float) / 6.0).reshape(-1, *([1] * a.ndim))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_g = (np.log(alpha) + a - np.log(beta) - b) / (alpha + beta)
        log_n = log_g + beta / (alpha + beta) * log_c6
        log_d = log_c6 - log_n
        return {"n_opt": np.exp(log_n), "d_opt": np.exp(log_d), "tokens_per_param": np.exp(log_d - log_n),
                "loss": np.exp(_log_predict((a, b, e, alpha, beta), log_n, log_d))}


# Small helpers.


def _skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def _percentile(samples: np.ndarray, q: float, axis=None):
    finite = np.where(np.isfinite(samples), samples, np.nan)
    if finite.size == 0 or np.isnan(finite).all():
        return None
    return np.nanpercentile(finite, q, axis=axis)


def _interval(value, samples) -> dict:
    samples = np.asarray(samples, float)
    return {"value": value, "lo": _percentile(samples, 2.5), "hi": _percentile(samples, 97.5)}


def _r2(y: np.ndarray, resid: np.ndarray) -> float | None:
    total = np.sum((y - y.mean()) ** 2)
    return float(1 - np.sum(resid**2) / total) if total > 0 else None


def _clean(obj):
    """Plain JSON types: numpy scalars and arrays unwrapped, NaN and infinities as None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj
