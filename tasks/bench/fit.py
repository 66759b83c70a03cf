"""Benchmark of Chinchilla approach 3 (a script, not a test): `scaling bench fit [--runs 250 ...]`.

On synthetic runs drawn from a known L(N, D) with noise, in one process, one BLAS thread:

1. the search over Chinchilla's full 4,500-start grid as the fit runs it (tasks.fit.parametric:
   batched L-BFGS on every start, the best KEEP run on, the best POLISH polished by scipy);
2. the plain way: a loop of scipy.optimize.minimize (L-BFGS-B, gradients by finite differences,
   the fit's tolerances) over the same starts. All 4,500 take minutes, so every k-th start is timed and the time
   scaled by 4,500 / (starts timed), which the output says;
3. the check that the batched search loses nothing: its optimum against running scipy's L-BFGS-B
   with the analytic gradient from every one of the 4,500 starts;
4. the bootstrap of the fit: 1,000 resamples, wall time, against the one search of 1.

The baseline of 1-3 is the plain loop: the speed-up is its time over each one's, scaled to all starts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import OptimizeResult, minimize
from scipy.special import huber, logsumexp
from threadpoolctl import threadpool_limits

from tasks.bench.table import print_table, ratio
from tasks.fit.objective import HUBER_DELTA
from tasks.fit.parametric import LBFGS_OPTIONS, LOWER, UPPER, Data, bootstrap, convergence, polish, search, start_grid
from tasks.fit.stats import Bootstrap

TRUTH = {"E": 1.82, "A": 482.0, "alpha": 0.3478, "B": 2085.0, "beta": 0.3658}  # Besiroglu et al. 2024


def synthetic_runs(count: int, noise: float, seed: int) -> Data:
    """`count` runs: 25 sizes from 1e7 to 1e10 parameters, each at count/25 token-per-parameter ratios from 2 to 200."""
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(1e7, 1e10, 25)
    ratios = np.geomspace(2, 200, max(1, count // len(sizes)))
    n, d = (a.ravel() for a in np.meshgrid(sizes, ratios))
    d = n * d
    loss = TRUTH["E"] + TRUTH["A"] / n ** TRUTH["alpha"] + TRUTH["B"] / d ** TRUTH["beta"]
    loss = loss * np.exp(noise * rng.standard_normal(len(n)))
    return Data(np.log(n), np.log(d), np.log(loss))


def plain_objective(theta, data: Data) -> float:
    """The same objective written plainly, as one would without batching: no gradient."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * data.log_n, b - beta * data.log_d, np.full_like(data.log_n, e)])
    return float(huber(HUBER_DELTA, logsumexp(terms, axis=0) - data.log_loss).sum())


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="scaling bench fit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=250)
    ap.add_argument("--noise", type=float, default=0.01, help="lognormal noise on the loss (default 1%%)")
    ap.add_argument("--starts", default="full", help="Chinchilla's 4,500-start grid ('full', the default) or N of it")
    ap.add_argument("--every", type=int, default=10, help="time the plain loop on every k-th start (default 10)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def searches(grid: np.ndarray, data: Data, every: int) -> tuple[OptimizeResult, float]:
    """Parts 1-3: the batched search and the exhaustive polish, against the plain loop; the search's
    optimum and time, which the bootstrap starts from and is compared with."""
    (best, info), fast_s = timed(lambda: search(grid, data))
    conv = convergence(best, data)
    subset = grid[::every]
    bounds = list(zip(LOWER, UPPER))
    plain, plain_s = timed(
        lambda: [
            minimize(plain_objective, x0, args=(data,), method="L-BFGS-B", bounds=bounds, options=LBFGS_OPTIONS)
            for x0 in subset
        ]
    )
    plain_best, scaled = min(r.fun for r in plain), plain_s * len(grid) / len(subset)
    polished, polish_s = timed(lambda: [polish(x0, data) for x0 in grid])
    exhaustive = min(polished, key=lambda r: r.fun)

    def row(name, timed_starts, seconds, all_seconds, fun):
        rel = f"{(fun - best.fun) / best.fun:+.2e}"
        return [
            name,
            timed_starts,
            f"{seconds:.2f}",
            f"{all_seconds:.2f}",
            f"{fun:.10e}",
            rel,
            ratio(scaled, all_seconds),
        ]

    print_table(
        f"L(N, D) from {len(grid)} starts; the plain loop times every {every}th start, scaled to all {len(grid)}",
        ["method", "starts timed", "s", f"s, {len(grid)} starts", "best objective", "vs batched", "speed-up vs plain"],
        [
            row("2. plain loop: scipy L-BFGS-B, finite differences", len(subset), plain_s, scaled, plain_best),
            row("1. batched search (tasks.fit.parametric)", len(grid), fast_s, fast_s, best.fun),
            row("3. scipy L-BFGS-B, analytic gradient, every start", len(grid), polish_s, polish_s, exhaustive.fun),
        ],
    )
    print(
        f"\nbatched search: {conv['state']}, theta {np.round(best.x, 4).tolist()}; {info['agreeing_starts']} of the "
        f"{info['screened_to']} screened starts reached it; max |theta difference| from 3. "
        f"{np.abs(best.x - exhaustive.x).max():.1e}"
    )
    return best, fast_s


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    data = synthetic_runs(args.runs, args.noise, args.seed)
    grid = start_grid(args.starts if args.starts == "full" else int(args.starts))
    print(f"{len(data.log_n)} synthetic runs, truth {TRUTH}, {args.noise:.1%} noise; {len(grid)} starts; 1 BLAS thread")
    with threadpool_limits(limits=1, user_api="blas"):
        best, fast_s = searches(grid, data, args.every)
        boot = Bootstrap(args.resamples, args.seed, "bench")
        samples, boot_s = timed(lambda: bootstrap(best.x, data, boot))
    ok = np.isfinite(samples).all(axis=1)
    lo, hi = np.percentile(samples[ok], [2.5, 97.5], axis=0)
    e_lo, e_hi = np.exp([lo[2], hi[2]])
    print_table(
        "4. the bootstrap from the batched search's optimum, against that one search; 95% intervals",
        ["", "resamples", "fitted", "s", "vs one search", "alpha", "beta", "E"],
        [
            ["1. batched search", 1, 1, f"{fast_s:.2f}", ratio(fast_s, fast_s), "", "", ""],
            [
                "4. bootstrap",
                args.resamples,
                ok.sum(),
                f"{boot_s:.2f}",
                ratio(boot_s, fast_s),
                f"[{lo[3]:.4f}, {hi[3]:.4f}]",
                f"[{lo[4]:.4f}, {hi[4]:.4f}]",
                f"[{e_lo:.4f}, {e_hi:.4f}]",
            ],
        ],
    )
    return 0
