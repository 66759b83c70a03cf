"""Benchmark of Chinchilla approach 3 (a script, not a test): `python -m tasks.fit.bench`.

On synthetic runs drawn from a known L(N, D) with noise, in one process, one BLAS thread:

1. the search over Chinchilla's full 4,500-start grid as the fit runs it (tasks.fit.parametric:
   batched L-BFGS on every start, the best KEEP run on, the best POLISH polished by scipy);
2. the plain way: a loop of scipy.optimize.minimize (L-BFGS-B, gradients by finite differences,
   the fit's tolerances) over the same starts. All 4,500 take minutes, so every k-th start is timed and the time
   scaled by 4,500 / (starts timed), which the output says;
3. the check that the batched search loses nothing: its optimum against running scipy's L-BFGS-B
   with the analytic gradient from every one of the 4,500 starts;
4. the bootstrap of the fit: 1,000 resamples, wall time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp
from threadpoolctl import threadpool_limits

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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m tasks.fit.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=250)
    ap.add_argument("--noise", type=float, default=0.01, help="lognormal noise on the loss (default 1%%)")
    ap.add_argument("--every", type=int, default=10, help="time the plain loop on every k-th start (default 10)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    data = synthetic_runs(args.runs, args.noise, args.seed)
    grid = start_grid("full")
    print(f"{len(data.log_n)} synthetic runs, truth {TRUTH}, {args.noise:.1%} noise; {len(grid)} starts; 1 BLAS thread")
    with threadpool_limits(limits=1, user_api="blas"):
        (best, info), fast_s = timed(lambda: search(grid, data))
        conv = convergence(best, data)
        print(
            f"\n1. batched search, all {len(grid)} starts: {fast_s:.2f} s; objective {best.fun:.10e}, "
            f"{conv['state']}, theta {np.round(best.x, 4).tolist()}"
        )
        print(f"   {info['agreeing_starts']} of the {info['screened_to']} screened starts reached this optimum")

        subset = grid[:: args.every]
        bounds = list(zip(LOWER, UPPER))
        plain, plain_s = timed(
            lambda: [
                minimize(plain_objective, x0, args=(data,), method="L-BFGS-B", bounds=bounds, options=LBFGS_OPTIONS)
                for x0 in subset
            ]
        )
        scaled = plain_s * len(grid) / len(subset)
        plain_best = min(r.fun for r in plain)
        print(
            "\n2. plain loop (scipy L-BFGS-B, finite-difference gradients, the fit's tolerances): "
            f"{len(subset)} starts (every {args.every}th) in {plain_s:.1f} s, scaled to {len(grid)}: {scaled:.0f} s"
        )
        print(
            f"   speed-up: {scaled / fast_s:.0f}x; its best objective {plain_best:.10e} "
            f"({(plain_best - best.fun) / best.fun:+.2e} relative to the batched search)"
        )

        polished, polish_s = timed(lambda: [polish(x0, data) for x0 in grid])
        exhaustive = min(polished, key=lambda r: r.fun)
        print(
            f"\n3. analytic-gradient L-BFGS-B from every one of the {len(grid)} starts: {polish_s:.1f} s; "
            f"best objective {exhaustive.fun:.10e}; the batched search's is "
            f"{(best.fun - exhaustive.fun) / exhaustive.fun:+.2e} relative to it, "
            f"max |theta difference| {np.abs(best.x - exhaustive.x).max():.1e}"
        )

        boot = Bootstrap(args.resamples, args.seed, "bench")
        samples, boot_s = timed(lambda: bootstrap(best.x, data, boot))
        ok = np.isfinite(samples).all(axis=1)
        lo, hi = np.percentile(samples[ok], [2.5, 97.5], axis=0)
        e_lo, e_hi = np.exp([lo[2], hi[2]])
        print(
            f"\n4. bootstrap, {args.resamples} resamples: {boot_s:.2f} s ({ok.sum()} fitted); 95% intervals: "
            f"alpha [{lo[3]:.4f}, {hi[3]:.4f}], beta [{lo[4]:.4f}, {hi[4]:.4f}], E [{e_lo:.4f}, {e_hi:.4f}]"
        )


if __name__ == "__main__":
    main()
