"""Scaling-law fits of a runs table, each number with its 95% bootstrap interval.

    fit_file("outputs/sweeps/pile/runs.parquet", "fits.json", FitConfig(budgets=[1e21]))
    fit_runs(table, FitConfig())   # the same on a DataFrame, returning the dict

Only `n_params`, `tokens`, `val_loss` are required (tasks.fit.table). What each fit is, and the
layout of fits.json, are in tasks.fit.entries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from threadpoolctl import threadpool_limits

from tasks.atomic import write_atomic
from tasks.fit.entries import (
    APPROACH1,
    APPROACH2,
    COMPUTE_MULTIPLIER,
    HELD_OUT,
    LEARNING_RATE,
    LOSS_VS_COMPUTE,
    PARAMETRIC,
    PER_ARCH,
    Fits,
)
from tasks.fit.frontier import compute_multipliers, fit_approach1, fit_loss_vs_compute
from tasks.fit.held_out import fit_held_out
from tasks.fit.isoflop import fit_approach2
from tasks.fit.learning_rate import fit_learning_rate
from tasks.fit.parametric import fit_parametric, start_grid
from tasks.fit.stats import Bootstrap, clean, skipped
from tasks.fit.table import best_lr_points, load_runs, prepare

if TYPE_CHECKING:  # tasks.config imports the model registry (and torch): only fit_runs' default needs it
    from tasks.config import FitConfig

__all__ = ["fit_file", "fit_runs", "load_runs"]


def fit_file(runs_path: str | Path, out_path: str | Path, config: FitConfig | None = None) -> Fits:
    """Fits the runs table at `runs_path` (.parquet or .csv) and writes the JSON to `out_path`."""
    runs_path, out_path = Path(runs_path), Path(out_path)
    try:
        fits = fit_runs(load_runs(runs_path), config)
    except ValueError as err:
        raise ValueError(f"{runs_path}: {err}") from err
    fits["source"] = str(runs_path)
    # A reader (the report task, a second flow run) never sees half a file.
    write_atomic(out_path, json.dumps(fits, indent=1, allow_nan=False))
    return fits


def fit_runs(runs: pd.DataFrame, config: FitConfig | None = None) -> Fits:
    """Every fit for every architecture of `runs`, laid out as tasks.fit.entries.Fits."""
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
            laws[arch] = fit_loss_vs_compute(mine, budgets, boot)
            fits[LOSS_VS_COMPUTE][arch] = laws[arch].entry
            fits[APPROACH1][arch] = fit_approach1(mine, budgets, boot)
            fits[APPROACH2][arch] = fit_approach2(mine, budgets, boot)
            fits[PARAMETRIC][arch] = fit_parametric(best_lr_points(mine), budgets, starts, boot)
            fits[LEARNING_RATE][arch] = fit_learning_rate(mine, boot)
            fits[HELD_OUT][arch] = fit_held_out(mine, starts, boot) if config.held_out else skipped("held_out is off")
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
            COMPUTE_MULTIPLIER: compute_multipliers(laws, reference, budgets) if len(archs) > 1 else None,
        }
    )
