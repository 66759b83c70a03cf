"""One report over several sweeps: their runs, curves and fits merged so that every figure and
table puts them on the same axes.

Each (sweep, architecture) becomes a *series*: the architecture's name for a single sweep, and
'arch (sweep)' for several. Series keep their architecture's colour; each sweep gets its own
marker and line style (`reports.figures.style.Palette`). The label is only ever a display name:
the `arch` and `sweep` columns stay beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

# The layout of fits.json; the one module of tasks that reports import (it imports nothing itself).
from tasks.fit.entries import COMPUTE_MULTIPLIER, PER_ARCH, Fits


@dataclass(frozen=True)
class SweepResults:
    """One sweep's recorded results, as the report reads them."""

    name: str
    runs: pd.DataFrame
    curves: pd.DataFrame
    fits: Fits
    config: str | None = None  # the sweep as it ran (YAML)


def series_label(sweep: str, arch: str, several: bool) -> str:
    return f"{arch} ({sweep})" if several else arch


def combine(sweeps: list[SweepResults]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(runs, curves, fits) of all sweeps: tables with `sweep` and `series` columns, fits keyed by series."""
    if not sweeps:
        raise ValueError("no sweep to report")
    several = len(sweeps) > 1
    runs = pd.concat([_labelled(s.runs, s.name, several) for s in sweeps], ignore_index=True)
    curves = pd.concat([_labelled(s.curves, s.name, several) for s in sweeps], ignore_index=True)
    fits: dict = {kind: {} for kind in PER_ARCH}
    fits |= {"excluded": [], "notes": [], "budgets": [], "n_runs": 0, "n_used": 0}
    multipliers = []
    for s in sweeps:
        f = s.fits
        for kind in PER_ARCH:
            for arch, entry in f.get(kind, {}).items():
                fits[kind][series_label(s.name, arch, several)] = entry
        fits["excluded"] += [{**e, "sweep": s.name} if several else e for e in f.get("excluded", [])]
        fits["notes"] += [f"{s.name}: {n}" if several else n for n in f.get("notes", [])]
        fits["budgets"] = sorted(set(fits["budgets"]) | set(f.get("budgets") or []))
        fits["n_runs"] += f.get("n_runs", 0)
        fits["n_used"] += f.get("n_used", 0)
        if block := f.get(COMPUTE_MULTIPLIER):
            multipliers.append(
                {
                    **block,
                    "reference": series_label(s.name, block["reference"], several),
                    "archs": {series_label(s.name, a, several): e for a, e in block["archs"].items()},
                }
            )
    fits[COMPUTE_MULTIPLIER] = multipliers if several else (multipliers[0] if multipliers else None)
    sources = [str(s.fits["source"]) for s in sweeps if s.fits.get("source")]
    fits["source"] = ", ".join(sources) if sources else None
    return runs, curves, fits


def _labelled(table: pd.DataFrame, sweep: str, several: bool) -> pd.DataFrame:
    archs = table["arch"].astype(str) if "arch" in table else pd.Series("all", index=table.index)
    return table.assign(sweep=sweep, series=[series_label(sweep, a, several) for a in archs])
