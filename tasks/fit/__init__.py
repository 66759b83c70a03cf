"""Scaling-law fits of a runs table, each number with its 95% bootstrap interval.

    fit_file("outputs/sweeps/pile/runs.parquet", "fits.json", FitConfig(budgets=[1e21]))
    fit_runs(table, FitConfig())   # the same on a DataFrame, returning the dict

Only `n_params`, `tokens`, `val_loss` are required (tasks.fit.table). Per architecture:

- power_law (tasks.fit.frontier): L = a * C^-b through the compute frontier of final losses;
- approach1 (frontier): Chinchilla approach 1, N_opt = G * C^a through the frontier runs' sizes;
- approach2 (tasks.fit.isoflop): Chinchilla approach 2, IsoFLOP parabolas and their minima;
- parametric (tasks.fit.parametric): Chinchilla approach 3, L(N, D) = E + A/N^alpha + B/D^beta,
  and the compute-optimal allocation it implies;
- learning_rate (tasks.fit.learning_rate): the best lr per (N, D) and its power law in N;
- held_out (tasks.fit.held_out): the laws refitted without the largest compute scale, predicting it;

and across architectures, compute_multiplier (frontier): compute saved at equal loss.

Layout of fits.json (strict JSON: a number that is not finite is null). An interval is
{"value", "lo", "hi"}, lo/hi the 2.5/97.5% bootstrap percentiles, null without resamples. A fit
that could not be made is {"status": "skipped", "reason": "..."} and holds no numbers.

    {"n_runs", "n_used", "excluded": [{"run_id", "name", "reason"}],   # not completed, not finite, outliers
     "notes": [str], "budgets": [FLOPs], "source": path (fit_file only),
     "options": {"budgets", "starts", "bootstrap", "seed", "outliers": {"drop_highest"}, "held_out", "reference_arch"},
     "power_law": {arch: {"status", "form", "params": {"a", "b"}, "r2", "n_runs",
                          "points": [{"run_id", "flops", "val_loss"}],
                          "band": {"flops", "lo", "hi"}, "offset": {"E", "a", "b", "r2", "success"} | null,
                          "predictions": [{"flops", "loss", "perplexity"}], "bootstrap": {"resamples", "ok", "seed"}}},
     "approach1": {arch: {"status", "method", "form", "exponents": {"a", "b", "G"}, "r2", "points",
                          "predictions": [{"flops", "n_opt", "d_opt", "tokens_per_param"}], "bootstrap"}},
     "approach2": {arch: {"status", "method", "form", "exponents": {"a", "b", "G"}, "r2",
                          "profiles": [{"flops", "n_sizes", "run_ids", "status": "ok" | "dropped", "reason",
                                        "n_opt", "loss_min"}], "predictions", "bootstrap"}},
     "parametric": {arch: {"status", "form", "params": {"E", "A", "B", "alpha", "beta"},
                           "exponents": {"a", "b", "G"}, "allocation_form",
                           "convergence": {"state": "converged" | "stopped early" | "on a bound", "converged",
                                           "success", "message", "iterations", "objective", "max_abs_grad",
                                           "on_bound": [names], "starts", "screened_to", "polished",
                                           "agreeing_starts"},
                           "n_points", "points": [{"run_ids", "n_params", "tokens", "val_loss", "predicted"}],
                           "residual_rms", "predictions": [{"flops", "n_opt", "d_opt", "tokens_per_param", "loss"}],
                           "bootstrap"}},
     "learning_rate": {arch: {"status", "form", "points": [{"n_params", "tokens", "n_lrs", "lrs", "status", "reason",
                                                            "lr_opt", "loss_opt"}],
                              "power_law": {"status", "form", "k", "p", "r2", "n_points"}, "bootstrap"}},
     "held_out": {arch: {"status", "flops", "run_ids", "n_fit_runs",
                         "parametric": {"status", "convergence", "points": [{"n_params", "tokens", "run_ids",
                                        "observed", "predicted", "relative_error"}], "mean_abs_relative_error"},
                         "power_law": {"status", "run_id", "flops", "observed", "predicted", "relative_error"}}},
     "compute_multiplier": {"reference", "form", "archs": {arch: {"status", "at": [{"flops", "loss", "multiplier",
                                                                                  "extrapolated"}]}}} | null}
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from threadpoolctl import threadpool_limits

from tasks.fit.frontier import compute_multipliers, fit_approach1, fit_power_law
from tasks.fit.held_out import fit_held_out
from tasks.fit.isoflop import fit_approach2
from tasks.fit.learning_rate import fit_learning_rate
from tasks.fit.parametric import fit_parametric, start_grid
from tasks.fit.stats import Bootstrap, clean, skipped
from tasks.fit.table import best_lr_points, load_runs, prepare

if TYPE_CHECKING:  # tasks.config imports the model registry (and torch): only fit_runs' default needs it
    from tasks.config import FitConfig

__all__ = ["fit_file", "fit_runs", "load_runs"]

PER_ARCH = ("power_law", "approach1", "approach2", "parametric", "learning_rate", "held_out")


def fit_file(runs_path: str | Path, out_path: str | Path, config: FitConfig | None = None) -> dict:
    """Fits the runs table at `runs_path` (.parquet or .csv) and writes the JSON to `out_path`."""
    runs_path, out_path = Path(runs_path), Path(out_path)
    try:
        fits = fit_runs(load_runs(runs_path), config)
    except ValueError as err:
        raise ValueError(f"{runs_path}: {err}") from err
    fits["source"] = str(runs_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # A reader (the report task, a second flow run) never sees half a file.
    with tempfile.NamedTemporaryFile("w", dir=out_path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(fits, tmp, indent=1, allow_nan=False)
    os.replace(tmp.name, out_path)
    return fits


def fit_runs(runs: pd.DataFrame, config: FitConfig | None = None) -> dict:
    """Every fit for every architecture of `runs`; the layout is in the module docstring."""
    if config is None:
        from tasks.config import FitConfig

        config = FitConfig()
    table = prepare(runs, config.outliers.drop_highest)
    used, budgets = table.used, list(config.budgets)
    archs = table.archs
    starts = start_grid(config.starts)
    fits = {kind: {} for kind in PER_ARCH}
    laws = {}
    # Batched L-BFGS and scipy's L-BFGS-B call BLAS on small arrays very often; threaded OpenBLAS
    # then only contends for cores (5 s became 40 s on a busy 2-core machine).
    with threadpool_limits(limits=1, user_api="blas"):
        for arch in archs:
            mine = used[used["arch"] == arch]
            if mine.empty:
                for kind in PER_ARCH:
                    fits[kind][arch] = skipped("no completed run with a finite val_loss")
                continue
            boot = Bootstrap(config.bootstrap, config.seed, arch)
            laws[arch] = fit_power_law(mine, budgets, boot)
            fits["power_law"][arch] = laws[arch].entry
            fits["approach1"][arch] = fit_approach1(mine, budgets, boot)
            fits["approach2"][arch] = fit_approach2(mine, budgets, boot)
            fits["parametric"][arch] = fit_parametric(best_lr_points(mine), budgets, starts, boot)
            fits["learning_rate"][arch] = fit_learning_rate(mine, boot)
            fits["held_out"][arch] = fit_held_out(mine, starts, boot) if config.held_out else skipped("held_out is off")
    notes = list(table.notes)
    if "lr" in used and (used.groupby(["arch", "n_params", "tokens"])["lr"].nunique() > 1).any():
        notes.append(
            "L(N, D) and the IsoFLOP profiles use, at each (n_params, tokens), the learning rate with "
            "the lowest val_loss (seeds averaged)."
        )
    reference = config.reference_arch or ("transformer++" if "transformer++" in archs else archs[0] if archs else None)
    return clean(
        {
            "n_runs": table.n_runs,
            "n_used": len(used),
            "excluded": table.excluded,
            "notes": notes,
            "budgets": budgets,
            "options": config.model_dump(mode="json"),
            **fits,
            "compute_multiplier": compute_multipliers(laws, reference, budgets) if len(archs) > 1 else None,
        }
    )
