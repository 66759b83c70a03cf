"""Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta, and the compute-optimal allocation it implies.

The objective (tasks.fit.objective) is minimised from a grid of starting points, Chinchilla's
4,500 by default (Hoffmann et al. 2022, app. D.2; Besiroglu et al. 2024), in three stages:

1. every start takes SCREEN_ITERS batched L-BFGS steps (tasks.fit.lbfgs), all starts in one
   array: far-off starts move a long way in those first steps, and a start still behind the best
   KEEP by then rarely wins;
2. the best KEEP run on, batched, for up to RUN_ITERS steps;
3. the best POLISH are polished by scipy's L-BFGS-B (analytic gradient, tight tolerances) and the
   lowest objective wins. `scaling bench fit` (tasks.bench.fit) checks this against polishing every start.

Convergence is checked, not assumed: scipy must have stopped by its own convergence tests (or in
its line search with a vanishing projected gradient), not on its iteration limit, and no
parameter may sit on a bound; `convergence.state` says which ("converged", "stopped early",
"on a bound"), and `agreeing_starts` how many of the screened starts reached the same optimum.
Each bootstrap resample (points drawn with replacement, as counts) is refitted from the full
fit's optimum, all resamples batched, stragglers polished by scipy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeResult, minimize

from tasks.fit.entries import OK, Convergence, Parametric, Skipped
from tasks.fit.lbfgs import minimise_batch, projected_gradient
from tasks.fit.objective import (
    HUBER_DELTA,
    THETA_NAMES,
    dead_terms,
    log_predict,
    objective_batch,
    parametric_objective,
)
from tasks.fit.stats import Bootstrap, interval, losses_equal, resample_counts, skipped

# theta = (log A, log B, log E, alpha, beta). The bounds only fence off degenerate directions
# (A -> inf with alpha -> inf); a fit that reaches one is reported, not trusted.
LOWER = np.array([-30.0, -30.0, -10.0, 0.0, 0.0])
UPPER = np.array([100.0, 100.0, 5.0, 4.0, 4.0])
# Chinchilla's initialisations: log A, log B in {0, 5, ..., 25}, log E in {-1, -.5, ..., 1},
# alpha, beta in {0, .5, ..., 2}: 6 * 6 * 5 * 5 * 5 = 4,500 starts.
START_AXES = (
    np.arange(0.0, 26.0, 5.0),
    np.arange(0.0, 26.0, 5.0),
    np.arange(-1.0, 1.01, 0.5),
    np.arange(0.0, 2.01, 0.5),
    np.arange(0.0, 2.01, 0.5),
)
SCREEN_ITERS = 10
KEEP = 128
RUN_ITERS = 300  # enough for a start in the optimum's basin to get there; the polish finishes the rest
POLISH = 8
LBFGS_OPTIONS = {"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000, "maxfun": 20000}
# Converged: scipy's own tests pass (relative reduction of f or projected gradient), or the line
# search found no progress left (scipy's "ABNORMAL", common at the last ulp with Huber's kink) with the
# projected gradient below this fraction of the largest gradient the objective can have (every
# residual at Huber's cap, pulling the same way).
GRAD_TOLERANCE = 1e-7
AGREE = 1e-6  # relative objective difference within which two starts found the same optimum
MIN_POINTS = 6  # more points than the five parameters
MIN_DISTINCT = 3  # E, A and alpha need three sizes to be told apart (likewise D)
COLLINEAR_LOG_STD = 0.05  # log D within 5% of a line in log N: beta cannot be told from alpha
FORM = "L = E + A / N^alpha + B / D^beta"
ALLOCATION_FORM = (
    "N_opt = G * C^a, D_opt = C / (6 N_opt) = C^b / (6 G), with a = beta/(alpha+beta), b = alpha/(alpha+beta)"
)


@dataclass
class Data:
    log_n: np.ndarray
    log_d: np.ndarray
    log_loss: np.ndarray

    @classmethod
    def of(cls, points: pd.DataFrame) -> Data:
        return cls(*(np.log(points[c].to_numpy(float)) for c in ("n_params", "tokens", "val_loss")))

    def grad_scale(self, weights: np.ndarray | None = None) -> float:
        w = np.ones_like(self.log_n) if weights is None else weights
        return HUBER_DELTA * float(w @ (1.0 + np.abs(self.log_n) + np.abs(self.log_d)))


@dataclass
class LawFit:
    theta: np.ndarray  # (5,)
    samples: np.ndarray  # (resamples, 5), NaN rows where a resample gave no fit
    convergence: Convergence


def start_grid(count: int | str = "full") -> np.ndarray:
    """Chinchilla's grid, or `count` of its points drawn without replacement (fixed seed), in grid order."""
    grid = np.array(list(itertools.product(*START_AXES)))
    if count == "full" or count >= len(grid):
        return grid
    return grid[np.sort(np.random.default_rng(0).choice(len(grid), count, replace=False))]


def identifiable(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> str | None:
    """Why these (N, D, L) points cannot pin down the five parameters, or None."""
    if len(n) < MIN_POINTS:
        return f"{len(n)} distinct (n_params, tokens) point(s) for 5 parameters; need at least {MIN_POINTS}"
    if np.unique(n).size < MIN_DISTINCT or np.unique(d).size < MIN_DISTINCT:
        return (
            f"{np.unique(n).size} distinct n_params and {np.unique(d).size} distinct tokens; "
            f"need {MIN_DISTINCT} of each"
        )
    if reason := losses_equal(loss):
        return reason
    slope, intercept = np.polyfit(np.log(n), np.log(d), 1)
    if np.std(np.log(d) - slope * np.log(n) - intercept) < COLLINEAR_LOG_STD:
        return (
            "tokens are a fixed function of n_params (one tokens-per-parameter ratio?): "
            "alpha and beta cannot be separated"
        )
    return None


def polish(x0: np.ndarray, data: Data, weights: np.ndarray | None = None) -> OptimizeResult:
    return minimize(
        parametric_objective,
        x0,
        args=(data.log_n, data.log_d, data.log_loss, HUBER_DELTA, weights),
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(LOWER, UPPER)),
        options=LBFGS_OPTIONS,
    )


def search(starts: np.ndarray, data: Data) -> tuple[OptimizeResult, dict]:
    """The best optimum from `starts` (see the module docstring) and how it was reached."""

    def objective(x, rows):
        return objective_batch(x, data.log_n, data.log_d, data.log_loss)

    screened = minimise_batch(objective, starts, LOWER, UPPER, SCREEN_ITERS) if len(starts) > KEEP else None
    kept = starts if screened is None else screened.x[np.argsort(screened.f)[:KEEP]]
    # No gradient test here (the default is 1e-10): on a plateau, where one term of L has died out, the
    # gradient is tiny long before the optimum; only an f that stops falling ends a start early.
    run = minimise_batch(objective, kept, LOWER, UPPER, RUN_ITERS)
    order = np.argsort(run.f)
    best = min((polish(run.x[i], data) for i in order[:POLISH]), key=lambda r: r.fun)
    info = {
        "starts": len(starts),
        "polished": min(POLISH, len(kept)),
        "agreeing_starts": int((run.f <= best.fun + AGREE * abs(best.fun)).sum()),
        "screened_to": len(kept),
    }
    return best, info


def convergence(best: OptimizeResult, data: Data) -> Convergence:
    pg = np.abs(projected_gradient(best.x, best.jac, LOWER, UPPER)).max()
    at_bound = {
        name for name, x, lo, hi in zip(THETA_NAMES, best.x, LOWER, UPPER) if min(x - lo, hi - x) <= 1e-6 * (hi - lo)
    }
    on_bound = [name for name in THETA_NAMES if name in at_bound or name in dead_terms(best.x, data.log_n, data.log_d)]
    if on_bound:
        state = "on a bound"
    elif not _polished_ok(best, data):
        state = "stopped early"
    else:
        state = "converged"
    return {
        "state": state,
        "converged": state == "converged",
        "success": bool(best.success),
        "message": str(best.message),
        "iterations": int(best.nit),
        "objective": float(best.fun),
        "max_abs_grad": float(pg),
        "on_bound": on_bound,
    }


def fit_law(points: pd.DataFrame, starts: np.ndarray, boot: Bootstrap) -> LawFit | str:
    """theta and its bootstrap samples for the points (one row per (N, D)); a reason string if they cannot be fitted."""
    n, d, loss = (points[c].to_numpy(float) for c in ("n_params", "tokens", "val_loss"))
    if reason := identifiable(n, d, loss):
        return reason
    data = Data.of(points)
    best, info = search(starts, data)
    return LawFit(best.x, bootstrap(best.x, data, boot), {**convergence(best, data), **info})


def bootstrap(theta: np.ndarray, data: Data, boot: Bootstrap) -> np.ndarray:
    """theta refitted to each resample of the points, from the full fit's optimum: (resamples, 5), NaN rows
    for resamples that cannot be fitted or whose fit did not converge."""
    n, d, loss = np.exp(data.log_n), np.exp(data.log_d), np.exp(data.log_loss)
    counts = resample_counts(boot.rng("parametric"), len(n), boot.resamples)
    samples = np.full((boot.resamples, 5), np.nan)
    # A resample with too few distinct points (or sizes) is as unfittable as such a table; leaving it
    # out, rather than letting the warm start "fit" it exactly, keeps it from shrinking the interval.
    valid = np.flatnonzero([identifiable(n[c > 0], d[c > 0], loss[c > 0]) is None for c in counts])
    if valid.size == 0:
        return samples
    weights = counts[valid]

    def objective(x, rows):
        return objective_batch(x, data.log_n, data.log_d, data.log_loss, weights[rows])

    gtol = GRAD_TOLERANCE * data.grad_scale()
    run = minimise_batch(objective, np.tile(theta, (len(valid), 1)), LOWER, UPPER, max_iter=1000, gtol=gtol)
    for i in np.flatnonzero(~run.converged):
        res = polish(run.x[i], data, weights[i])
        run.x[i], run.converged[i] = res.x, _polished_ok(res, data, weights[i])
    samples[valid[run.converged]] = run.x[run.converged]
    return samples


def _polished_ok(res: OptimizeResult, data: Data, weights: np.ndarray | None = None) -> bool:
    """scipy converged by its own tests, or stopped in its line search with nothing left to gain."""
    if res.status == 0:
        return True
    pg = np.abs(projected_gradient(res.x, res.jac, LOWER, UPPER)).max()
    return res.status == 2 and pg <= GRAD_TOLERANCE * data.grad_scale(weights)


def fit_parametric(
    points: pd.DataFrame, budgets: list[float], starts: np.ndarray, boot: Bootstrap
) -> Parametric | Skipped:
    """Approach 3 on one architecture's best-learning-rate points, as its `parametric` entry in fits.json."""
    law = fit_law(points, starts, boot)
    if isinstance(law, str):
        return skipped(law)
    data = Data.of(points)
    values, spread = natural(law.theta), natural(law.samples.T)
    optimum, optimum_boot = allocation(law.theta, budgets), allocation(law.samples.T, budgets)
    predicted = np.exp(log_predict(law.theta, data.log_n, data.log_d))
    return {
        "status": OK,
        "form": FORM,
        "params": {k: interval(values[k], spread[k]) for k in ("E", "A", "B", "alpha", "beta")},
        "exponents": {k: interval(values[k], spread[k]) for k in ("a", "b", "G")},
        "allocation_form": ALLOCATION_FORM,
        "convergence": law.convergence,
        "n_points": len(points),
        "points": [
            {
                "run_ids": list(r.run_ids),
                "n_params": r.n_params,
                "tokens": r.tokens,
                "val_loss": r.val_loss,
                "predicted": p,
            }
            for r, p in zip(points.itertuples(), predicted)
        ],
        "residual_rms": float(np.sqrt(np.mean((np.log(predicted) - data.log_loss) ** 2))),
        "predictions": [
            {"flops": c, **{k: interval(optimum[k][i], optimum_boot[k][i]) for k in optimum}}
            for i, c in enumerate(budgets)
        ],
        "bootstrap": boot.info(law.samples),
    }


def natural(theta) -> dict:
    """A, B, E, alpha, beta and the allocation's a, b, G from theta (5,) or (5, resamples)."""
    a, b, e, alpha, beta = (np.asarray(t, float) for t in theta)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        exp_a = beta / (alpha + beta)
        # Hoffmann et al. eq. 4: N_opt = G' (C/6)^a, G' = (alpha A / (beta B))^(1/(alpha+beta)); G = G' 6^-a.
        log_g = (np.log(alpha) + a - np.log(beta) - b) / (alpha + beta) - exp_a * np.log(6.0)
        return {
            "A": np.exp(a),
            "B": np.exp(b),
            "E": np.exp(e),
            "alpha": alpha,
            "beta": beta,
            "a": exp_a,
            "b": alpha / (alpha + beta),
            "G": np.exp(log_g),
        }


def allocation(theta, budgets: list[float]) -> dict:
    """N_opt, D_opt, D/N and the loss there at each budget under C = 6ND; arrays (budgets, ...)."""
    p = natural(theta)
    log_c = np.log(np.asarray(budgets, float)).reshape(-1, *([1] * np.ndim(p["a"])))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_n = np.log(p["G"]) + p["a"] * log_c
        log_d = log_c - np.log(6.0) - log_n
        return {
            "n_opt": np.exp(log_n),
            "d_opt": np.exp(log_d),
            "tokens_per_param": np.exp(log_d - log_n),
            "loss": np.exp(log_predict(np.asarray(theta, float), log_n, log_d)),
        }
