"""The compute frontier: for each compute budget the lowest final loss, where it beats every cheaper budget.

On it, per architecture:
- the loss-vs-compute law L = a * C^-b (the Mamba paper's Figure 4), least squares in log-log;
- Chinchilla approach 1: the frontier runs' sizes give N_opt(C) = G * C^a, and D_opt = C / (6 N_opt);
- between architectures, the compute multiplier at equal loss.

The bootstrap resamples runs (as counts) and recomputes the frontier in each resample: which runs
are on it is part of what is uncertain. A run drawn twice counts twice in the line.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from tasks.fit.entries import OK, Approach1, ComputeMultipliers, LossVsCompute, Skipped
from tasks.fit.stats import Bootstrap, interval, losses_equal, percentile, r2, resample_counts, skipped, weighted_line
from tasks.fit.table import budget_groups

MIN_FRONTIER_POINTS = 3  # two points always fit a line exactly
MIN_OFFSET_POINTS = 5  # L = E + a C^-b: three parameters, two degrees of freedom left
BAND_POINTS = 50
LOSS_VS_COMPUTE_FORM = "L = a * C^-b"
APPROACH1_FORM = "N_opt = G * C^a, D_opt = C / (6 N_opt), so b = 1 - a"
MULTIPLIER_FORM = (
    "C_reference(L) / C_arch(L) at the loss L the reference's law gives at each compute C: "
    ">1 means the arch needs less compute"
)


def frontier(flops: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the frontier runs, by compute: the lowest loss of each compute budget, where it beats
    every cheaper budget's. Runs within BUDGET_TOLERANCE of each other's compute are one budget, so a
    worse run that happens to have used a few FLOPs less than the best of its budget is not on it."""
    on = np.flatnonzero(frontier_masks(flops, loss, np.ones((1, len(flops))))[0])
    return on[np.argsort(flops[on], kind="stable")]


def frontier_masks(flops: np.ndarray, loss: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(resamples, runs): whether each run is drawn and on the frontier of its resample's runs."""
    labels = budget_groups(flops)
    order = np.lexsort((loss, labels))  # by budget, then by loss within it
    bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2)) if len(flops) else np.zeros(1, int)
    drawn = counts[:, order] > 0
    masks = np.zeros(counts.shape, bool)
    best_so_far = np.full(len(counts), np.inf)
    rows = np.arange(len(counts))
    for start, end in itertools.pairwise(bounds):  # budgets in order of compute
        present = drawn[:, start:end].any(axis=1)
        first = order[start + drawn[:, start:end].argmax(axis=1)]  # the lowest drawn loss of the budget
        better = present & (loss[first] < best_so_far)
        masks[rows[better], first[better]] = True
        best_so_far = np.where(better, loss[first], best_so_far)
    return masks


def _boot_lines(x: np.ndarray, y: np.ndarray, flops, loss, boot: Bootstrap, fit: str) -> np.ndarray:
    """(resamples, 2) slope and intercept of y on x over each resample's frontier; NaN rows where it is too short."""
    counts = resample_counts(boot.rng(fit), len(flops), boot.resamples)
    weights = counts * frontier_masks(flops, loss, counts)
    slope, intercept = weighted_line(x, y, weights)
    short = (weights > 0).sum(axis=1) < MIN_FRONTIER_POINTS  # frontier runs are of distinct budgets
    return np.where(short[:, None], np.nan, np.stack([slope, intercept], axis=1)).reshape(-1, 2)


def _frontier_or_reason(runs: pd.DataFrame) -> tuple[np.ndarray, str | None]:
    flops, loss = runs["flops"].to_numpy(float), runs["val_loss"].to_numpy(float)
    if reason := losses_equal(loss):
        return np.array([], int), reason
    front = frontier(flops, loss)
    if np.unique(flops[front]).size < MIN_FRONTIER_POINTS:
        return front, f"{len(front)} run(s) on the compute frontier ({len(runs)} completed); need {MIN_FRONTIER_POINTS}"
    return front, None


@dataclass
class LossVsComputeFit:
    entry: LossVsCompute | Skipped  # its entry in fits.json
    estimate: np.ndarray | None = None  # (1, 2): b, log a
    samples: np.ndarray | None = None  # (resamples, 2), NaN rows where a resample had too short a frontier


def fit_loss_vs_compute(runs: pd.DataFrame, budgets: list[float], boot: Bootstrap) -> LossVsComputeFit:
    front, reason = _frontier_or_reason(runs)
    if reason:
        return LossVsComputeFit(skipped(reason))
    flops, loss = runs["flops"].to_numpy(float), runs["val_loss"].to_numpy(float)
    log_c, log_l = np.log(flops), np.log(loss)
    weights = np.zeros(len(runs))
    weights[front] = 1.0
    slope, intercept = (float(v[0]) for v in weighted_line(log_c, log_l, weights[None]))
    # (slope, intercept) = (-b, log a). "power_law", the law's name before loss_vs_compute, only seeds the
    # bootstrap's draws here: renaming the stream would change every interval a given seed gives.
    samples = _boot_lines(log_c, log_l, flops, loss, boot, "power_law")
    b, log_a = -slope, intercept
    b_s, log_a_s = -samples[:, 0], samples[:, 1]
    # Out to one decade past the largest run: the extrapolation the report draws, with its band.
    grid = np.geomspace(flops[front].min() / 2, flops[front].max() * 10, BAND_POINTS)
    curves = np.exp(log_a_s[:, None] - b_s[:, None] * np.log(grid))  # (resamples, grid)
    pred = np.asarray(budgets, float)
    pred_s = np.exp(log_a_s[:, None] - b_s[:, None] * np.log(pred))
    entry: LossVsCompute = {
        "status": OK,
        "form": LOSS_VS_COMPUTE_FORM,
        "params": {"a": interval(np.exp(log_a), np.exp(log_a_s)), "b": interval(b, b_s)},
        "r2": r2(log_l[front], log_l[front] - (log_a - b * log_c[front])),
        "n_runs": len(runs),
        "points": [{"run_id": runs["run_id"].iloc[i], "flops": flops[i], "val_loss": loss[i]} for i in front],
        "band": {"flops": grid, "lo": percentile(curves, 2.5, axis=0), "hi": percentile(curves, 97.5, axis=0)},
        "offset": _offset_fit(flops[front], loss[front]) if len(front) >= MIN_OFFSET_POINTS else None,
        "predictions": [
            {
                "flops": c,
                "loss": interval(np.exp(log_a - b * np.log(c)), pred_s[:, i]),
                "perplexity": interval(np.exp(np.exp(log_a - b * np.log(c))), np.exp(pred_s[:, i])),
            }
            for i, c in enumerate(pred)
        ],
        "bootstrap": boot.info(samples),
    }
    return LossVsComputeFit(entry, np.array([[b, log_a]]), np.stack([b_s, log_a_s], axis=1))


def _offset_fit(flops: np.ndarray, loss: np.ndarray) -> dict:
    """L = E + a * C^-b for comparison: L = a * C^-b cannot bend towards an irreducible loss."""
    c_ref = np.exp(np.log(flops).mean())  # C in units of its geometric mean keeps a O(1) during the search
    x, y = flops / c_ref, np.log(loss)

    def residuals(p):
        e, log_a, b = p
        return np.log(e + np.exp(log_a) * x**-b) - y

    lowest = loss.min()
    res = least_squares(residuals, [lowest / 2, np.log(lowest / 2), 0.1], bounds=([0, -np.inf, 0], [lowest, np.inf, 5]))
    e, log_a, b = res.x
    return {"E": e, "a": np.exp(log_a) * c_ref**b, "b": b, "r2": r2(y, res.fun), "success": bool(res.success)}


def fit_approach1(runs: pd.DataFrame, budgets: list[float], boot: Bootstrap) -> Approach1 | Skipped:
    """Chinchilla approach 1 on the frontier of final losses: N_opt = G * C^a through the frontier runs' sizes."""
    front, reason = _frontier_or_reason(runs)
    if reason:
        return skipped(reason)
    flops, loss, n = (runs[c].to_numpy(float) for c in ("flops", "val_loss", "n_params"))
    if np.unique(n[front]).size < 2:
        return skipped(f"every frontier run has the same size ({n[front][0]:.3g} parameters): N_opt cannot be traced")
    log_c, log_n = np.log(flops), np.log(n)
    weights = np.zeros(len(runs))
    weights[front] = 1.0
    a, log_g = (float(v[0]) for v in weighted_line(log_c, log_n, weights[None]))
    samples = _boot_lines(log_c, log_n, flops, loss, boot, "approach1")
    a_s, log_g_s = samples[:, 0], samples[:, 1]
    log_budgets = np.log(np.asarray(budgets, float))
    n_opt, n_opt_s = np.exp(log_g + a * log_budgets), np.exp(log_g_s[:, None] + a_s[:, None] * log_budgets)
    predictions = []
    for i, c in enumerate(budgets):
        d, d_s = c / (6 * n_opt[i]), c / (6 * n_opt_s[:, i])
        predictions.append(
            {
                "flops": c,
                "n_opt": interval(n_opt[i], n_opt_s[:, i]),
                "d_opt": interval(d, d_s),
                "tokens_per_param": interval(d / n_opt[i], d_s / n_opt_s[:, i]),
            }
        )
    tokens = runs["tokens"].to_numpy(float)
    return {
        "status": OK,
        "method": "Chinchilla approach 1: the frontier of final losses over compute",
        "form": APPROACH1_FORM,
        "exponents": {
            "a": interval(a, a_s),
            "b": interval(1 - a, 1 - a_s),
            "G": interval(np.exp(log_g), np.exp(log_g_s)),
        },
        "r2": r2(log_n[front], log_n[front] - (log_g + a * log_c[front])),
        "points": [
            {
                "run_id": runs["run_id"].iloc[i],
                "flops": flops[i],
                "n_params": n[i],
                "tokens": tokens[i],
                "val_loss": loss[i],
            }
            for i in front
        ],
        "predictions": predictions,
        "bootstrap": boot.info(samples),
    }


def compute_multipliers(laws: dict[str, LossVsComputeFit], reference: str, budgets: list[float]) -> ComputeMultipliers:
    """For each architecture against `reference`, how many times less compute it needs for the same loss:
    at the largest compute both were run at (no extrapolation), then at each budget."""
    out = {"reference": reference, "form": MULTIPLIER_FORM, "archs": {}}
    ref = laws.get(reference) or LossVsComputeFit(skipped(f"{reference} is not in the runs table"))
    for arch, law in laws.items():
        if arch == reference:
            continue
        if ref.estimate is None or law.estimate is None:
            why = ref.entry["reason"] if ref.estimate is None else law.entry["reason"]
            out["archs"][arch] = skipped(f"needs both loss-vs-compute laws; {why}")
            continue
        observed = min(max(p["flops"] for p in law.entry["points"]), max(p["flops"] for p in ref.entry["points"]))
        at = []
        for c in [observed, *budgets]:
            log_m, log_l = _log_multiplier(ref.estimate, law.estimate, c)
            log_m_s, _ = _log_multiplier(ref.samples, law.samples, c)
            at.append(
                {
                    "flops": c,
                    "loss": np.exp(log_l[0]),
                    "multiplier": interval(np.exp(log_m[0]), np.exp(log_m_s)),
                    "extrapolated": c > observed,
                }
            )
        out["archs"][arch] = {"status": OK, "at": at}
    return out


def _log_multiplier(ref: np.ndarray, mine: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """log C / C_arch(L_ref(C)) and log L_ref(C) for rows of (b, log a).

    The two architectures' runs are independent, so pairing their resamples row by row is itself a
    bootstrap of the pair. An arch reaches log L at log C_arch = (log a - log L) / b."""
    log_l = ref[:, 1] - ref[:, 0] * np.log(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_c_arch = np.where(mine[:, 0] > 0, (mine[:, 1] - log_l) / mine[:, 0], np.nan)
    return np.log(c) - log_c_arch, log_l
