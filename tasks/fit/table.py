"""The runs table a fit reads: loading (Parquet or CSV), the runs left out and why, and groupings.

Only `n_params`, `tokens` and `val_loss` are required. `flops` defaults to 6 * n_params * tokens
(Kaplan et al. 2020), `status` to completed, `arch` to one group named 'all', `run_id` to the row
number; each default taken is said in the notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.status import COMPLETED

REQUIRED = ("n_params", "tokens", "val_loss")
# Runs whose compute is within this factor of a budget's cheapest run count as that budget: real
# FLOP counts of one IsoFLOP budget differ by rounding to whole steps and by size-dependent terms.
BUDGET_TOLERANCE = 1.2


@dataclass
class RunsTable:
    used: pd.DataFrame  # rows fitted, with arch, run_id, flops filled in
    excluded: list[dict]  # {"run_id", "name", "reason"}
    archs: list[str]  # every architecture in the table, fitted runs or not
    notes: list[str] = field(default_factory=list)
    n_runs: int = 0


def load_runs(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"runs table not found: {path}")
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"{path}: expected a .parquet or .csv runs table")


def prepare(runs: pd.DataFrame, drop_highest: int = 0) -> RunsTable:
    """Fills in the optional columns and splits off the runs that cannot be fitted, each with its reason."""
    missing = [c for c in REQUIRED if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table lacks column(s) {', '.join(missing)} (fits need {', '.join(REQUIRED)})")
    table = runs.reset_index(drop=True).copy()
    # A CSV cell that is not a number becomes NaN here, and its run is left out below with the reason.
    for column in (*REQUIRED, "flops"):
        if column in table:
            table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    notes = []
    derived_flops = 6.0 * table["n_params"] * table["tokens"]
    if "flops" not in table:
        table["flops"] = derived_flops
        notes.append("The runs table has no flops column: compute is C = 6 * n_params * tokens.")
    elif table["flops"].isna().any():
        notes.append(
            f"{int(table['flops'].isna().sum())} run(s) lack flops: C = 6 * n_params * tokens is used for them."
        )
        table["flops"] = table["flops"].fillna(derived_flops)
    if "status" not in table:
        table["status"] = COMPLETED
        notes.append("The runs table has no status column: every run with a finite val_loss is taken as completed.")
    table["arch"] = table["arch"].fillna("unknown").astype(str) if "arch" in table else "all"
    table["run_id"] = table["run_id"].astype(str) if "run_id" in table else table.index.astype(str)
    table["name_"] = table.get("name")
    table["reason"] = [_exclusion(r) for r in table.itertuples()]
    if drop_highest:
        _drop_highest(table, drop_highest)
        notes.append(
            f"Outlier rule: per architecture, the {drop_highest} run(s) with the highest val_loss are left out."
        )
    excluded = [
        {"run_id": r.run_id, "name": None if pd.isna(r.name_) else str(r.name_), "reason": r.reason}
        for r in table[table["reason"].notna()].itertuples()
    ]
    used = table[table["reason"].isna()].drop(columns=["reason", "name_"]).reset_index(drop=True)
    return RunsTable(used, excluded, sorted(table["arch"].unique()), notes, len(table))


def _exclusion(run) -> str | None:
    if run.status != COMPLETED:
        return f"status {run.status}"
    if not np.isfinite(run.val_loss):
        return "val_loss is not finite"
    if run.val_loss <= 0:
        return "val_loss is not positive"
    if not all(np.isfinite(v) and v > 0 for v in (run.n_params, run.tokens, run.flops)):
        return "n_params, tokens or flops is not a positive number"
    return None


def _drop_highest(table: pd.DataFrame, k: int) -> None:
    # Applied after the other exclusions, so a diverged run does not use up one of the k.
    fittable = table[table["reason"].isna()]
    for arch, runs in fittable.groupby("arch"):
        worst = runs["val_loss"].nlargest(k).index
        table.loc[worst, "reason"] = f"outlier: one of the {k} highest val_loss in {arch} (outliers.drop_highest={k})"


def best_lr_points(runs: pd.DataFrame) -> pd.DataFrame:
    """One point per (n_params, tokens): seeds averaged, then the learning rate with the lowest loss.

    Columns n_params, tokens, flops, val_loss, run_ids (the runs of the chosen learning rate)."""
    keys = ["n_params", "tokens"]
    lr_keys = keys + (["lr"] if "lr" in runs else [])
    per_lr = (
        runs.groupby(lr_keys, dropna=False)
        .agg(val_loss=("val_loss", "mean"), flops=("flops", "mean"), run_ids=("run_id", list))
        .reset_index()
    )
    best = per_lr.loc[per_lr.groupby(keys)["val_loss"].idxmin()]
    return best.sort_values(keys).reset_index(drop=True)


def budget_groups(flops: np.ndarray) -> np.ndarray:
    """A budget label (0, 1, ... by compute) for each run; see BUDGET_TOLERANCE."""
    order = np.argsort(flops, kind="stable")
    labels = np.empty(len(flops), int)
    label, start = -1, -np.inf
    for i in order:
        if flops[i] > start * BUDGET_TOLERANCE:
            label, start = label + 1, flops[i]
        labels[i] = label
    return labels
