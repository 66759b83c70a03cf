"""Report: render recorded sweeps (runs.parquet, curves.parquet, fits.json, sweep.yaml) into HTML,
Markdown and PDF with figures. Needs no training, so an old sweep's report can be re-rendered alone
(`scaling report SWEEP_DIR`), and several sweeps can share one report (`scaling report A B`).

    <output>/sweeps/<name>/report/              one sweep's report
    <output>/comparisons/<a>+<b>/               a report of several sweeps (by default)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from reports.combine import SweepResults, combine
from reports.render import render_report
from reports.summary import summary_markdown
from reports.tables import runs_table
from tasks.layout import Layout, SweepDir


def load_sweep_results(sweep: SweepDir) -> SweepResults:
    for path in sweep.recorded:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {sweep.path} a sweep folder (outputs/sweeps/NAME)?")
    return SweepResults(
        name=sweep.name,
        runs=pd.read_parquet(sweep.runs),
        curves=pd.read_parquet(sweep.curves),
        fits=json.loads(sweep.fits.read_text()),
        config=sweep.config.read_text() if sweep.config.is_file() else None,
    )


def default_report_dir(sweeps: list[SweepDir]) -> Path:
    """A sweep's own report/ folder; for several, <output>/comparisons/<name>+<name>."""
    if len(sweeps) == 1:
        return sweeps[0].report
    return Layout.of_sweep(sweeps[0].path).comparison([s.name for s in sweeps])


def report_sweeps(
    sweeps: list[SweepDir], out_dir: Path | None = None, title: str | None = None, pdf: bool = True
) -> dict:
    """Render the report; returns render_report's paths plus the summary Markdown and the runs table
    (a list of row dicts) for Prefect artifacts."""
    results = [load_sweep_results(s) for s in sweeps]
    names = [s.name for s in results]
    if len(set(names)) < len(names):
        raise ValueError(
            f"two of the sweep folders have the same name ({', '.join(names)}); a report tells them apart by name"
        )
    out = Path(out_dir) if out_dir else default_report_dir(sweeps)
    result = render_report(results, out, title or " vs ".join(names), pdf=pdf)
    runs, _, fits = combine(results)
    table = runs_table(runs)
    return {
        **result,
        "summary": summary_markdown(runs, fits),
        "table": [dict(zip(table.columns, row)) for row in table.rows],
    }
