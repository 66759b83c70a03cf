"""Shared pieces of the fits: bootstrap resampling, weighted straight lines and parabolas (batched
over resamples), 95% intervals, and strict-JSON output.

A bootstrap resample is a row of counts (how often each run was drawn), so that one resample's
fit is a weighted fit and a thousand resamples are one array operation.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np

from tasks.fit.entries import SKIPPED, BootstrapInfo, Interval, Skipped

LEVEL = 95.0  # percent; intervals are percentile intervals of the bootstrap distribution


@dataclass(frozen=True)
class Bootstrap:
    """How many resamples, from which seed; `key` (the architecture) gives each its own draws."""

    resamples: int
    seed: int
    key: str = ""

    def rng(self, fit: str) -> np.random.Generator:
        # Per (seed, architecture, fit), so one fit's draws do not depend on which others ran.
        words = [int.from_bytes(hashlib.sha256(k.encode()).digest()[:4], "little") for k in (self.key, fit)]
        return np.random.default_rng([self.seed, *words])

    def info(self, samples: np.ndarray) -> BootstrapInfo:
        """How many resamples there were and how many gave a fit (the rest are left out of the intervals)."""
        ok = int(np.isfinite(samples).all(axis=tuple(range(1, samples.ndim))).sum()) if self.resamples else 0
        return {"resamples": self.resamples, "ok": ok, "seed": self.seed}


def resample_counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """(resamples, n) draw counts of a plain bootstrap over n items."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float) if n else np.zeros((resamples, 0))


def stratified_counts(rng: np.random.Generator, groups: np.ndarray, resamples: int) -> np.ndarray:
    """(resamples, n) counts resampling within each group, so every group keeps its size (an IsoFLOP
    budget keeps its model sizes, a (N, D) point its learning rates)."""
    counts = np.zeros((resamples, len(groups)))
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        counts[:, members] = resample_counts(rng, len(members), resamples)
    return counts


def weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of y on x per row of weights w (rows, n); y is (n,) or (rows, n).

    NaN where a row's weight sits on fewer than two distinct x."""
    w = np.where(np.isfinite(y), w, 0.0)
    y = np.where(np.isfinite(y), y, 0.0)
    total = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean, y_mean = (w * x).sum(-1) / total, (w * y).sum(-1) / total
        dx = x - x_mean[..., None]
        sxx = (w * dx**2).sum(-1)
        slope = (w * dx * (y - y_mean[..., None])).sum(-1) / sxx
        slope = np.where(sxx > 1e-12 * np.maximum(1.0, (w * x**2).sum(-1)), slope, np.nan)
    return slope, y_mean - slope * x_mean


def weighted_parabola(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Coefficients (c0, c1, c2) of y = c0 + c1 x + c2 x^2 per row of weights w (rows, n): (rows, 3).

    NaN rows where the weights sit on fewer than three distinct x."""
    design = np.stack([np.ones_like(x), x, x**2], axis=1)  # (n, 3)
    gram = np.einsum("rn,ni,nj->rij", w, design, design)
    rhs = np.einsum("rn,ni,n->ri", w, design, y)
    distinct = np.array([np.unique(x[row > 0]).size for row in w])
    coef = np.full((len(w), 3), np.nan)
    ok = distinct >= 3
    if ok.any():
        coef[ok] = np.linalg.solve(gram[ok], rhs[ok][..., None])[..., 0]
    return coef


@dataclass
class Minimum:
    """The vertex of a fitted parabola: where (x) and how low (y), and both per resample (NaN where the
    resample's parabola has no minimum within the range). With three points the parabola fits them
    exactly, there is nothing to resample, and the samples repeat the estimate (resampled False)."""

    x: float
    y: float
    x_s: np.ndarray
    y_s: np.ndarray
    resampled: bool

    def intervals(self) -> tuple[tuple, tuple]:
        """(value, samples) pairs for interval(): no samples (a null interval) when nothing was resampled."""
        none = np.array([])
        return (self.x, self.x_s if self.resampled else none), (self.y, self.y_s if self.resampled else none)


def parabola_minimum(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> Minimum | str:
    """The minimum of the least-squares parabola y(x), or why there is none: "not convex" (it opens
    downward or is flat) or "outside" (the vertex lies beyond the x that were run: an extrapolation)."""
    center = x.mean()  # keeps the normal equations well conditioned
    x = x - center
    coef = weighted_parabola(x, y, np.ones((1, len(x))))[0]
    at, low = _vertex(coef[None], x.min(), x.max())
    if not np.isfinite(at[0]):
        return "not convex" if not coef[2] > 0 else "outside"
    if len(x) <= 3:
        return Minimum(
            center + at[0], low[0], np.full(len(counts), center + at[0]), np.full(len(counts), low[0]), False
        )
    at_s, low_s = _vertex(weighted_parabola(x, y, counts), x.min(), x.max())
    return Minimum(center + float(at[0]), float(low[0]), center + at_s, low_s, True)


def resampled_line(x: np.ndarray, y_s: np.ndarray, rng: np.random.Generator, min_distinct: int):
    """Slope and intercept per resample (rows of y_s (resamples, groups)) through a line over groups that
    are themselves drawn with replacement: the second level of a two-level bootstrap (groups, then runs
    within each, already in y_s). NaN where a resample has fewer than `min_distinct` distinct x."""
    weights = resample_counts(rng, len(x), len(y_s)) * np.isfinite(y_s)
    slope, intercept = weighted_line(x, y_s, weights)
    short = np.array([np.unique(x[w > 0]).size < min_distinct for w in weights], bool)
    return np.where(short, np.nan, slope), np.where(short, np.nan, intercept)


def _vertex(coef: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    c0, c1, c2 = coef.T
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
    x = np.where((x >= lo) & (x <= hi), x, np.nan)
    return x, c0 + c1 * x + c2 * x**2


def percentile(samples, q: float, axis=None):
    samples = np.asarray(samples, float)
    finite = np.where(np.isfinite(samples), samples, np.nan)
    if finite.size == 0 or np.isnan(finite).all():
        return None
    with warnings.catch_warnings():
        # A column with no finite sample warns and comes out NaN: null in the JSON.
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(finite, q, axis=axis)


def interval(value, samples) -> Interval:
    """{"value", "lo", "hi"}: the estimate and its 95% bootstrap percentile interval (null without resamples)."""
    tail = (100.0 - LEVEL) / 2
    return {"value": value, "lo": percentile(samples, tail), "hi": percentile(samples, 100.0 - tail)}


def r2(y: np.ndarray, resid: np.ndarray) -> float | None:
    total = np.sum((y - y.mean()) ** 2)
    return float(1 - np.sum(resid**2) / total) if total > 0 else None


def skipped(reason: str) -> Skipped:
    """A fit that was not made: the reason in words, and no numbers."""
    return {"status": SKIPPED, "reason": reason}


def losses_equal(loss: np.ndarray) -> str | None:
    if len(loss) and np.ptp(np.log(loss)) < 1e-12:
        return f"all {len(loss)} losses are equal ({loss[0]:.6g}): there is no scaling to fit"
    return None


def clean(obj):
    """Plain JSON types: numpy scalars and arrays unwrapped, NaN and infinities as None."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj
