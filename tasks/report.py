"""Report: render a sweep's recorded results (runs.parquet, curves.parquet, fits.json) into
<sweep_dir>/report/ as HTML and Markdown with figures. Needs no training, so an old sweep's
report can be re-rendered alone (`scaling report SWEEP_DIR`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from reports.render import render_report
from reports.summary import runs_table, summary_markdown


def report_sweep(sweep_dir: Path, title: str) -> dict:
    """Render the report; returns its paths plus the summary Markdown and runs table for Prefect."""
    sweep_dir = Path(sweep_dir)
    for name in ("runs.parquet", "curves.parquet", "fits.json"):
        if not (sweep_dir / name).is_file():
            raise FileNotFoundError(f"{sweep_dir / name} not found: is {sweep_dir} a sweep folder (outputs/sweeps/NAME)?")
    runs = pd.read_parquet(sweep_dir / "runs.parquet")
    curves = pd.read_parquet(sweep_dir / "curves.parquet")
    fits = json.loads((sweep_dir / "fits.json").read_text())
    paths = render_report(runs, curves, fits, sweep_dir / "report", title)
    table = runs_table(runs)
    return {
        **paths,
        "summary": summary_markdown(runs, fits),
        "table": [dict(zip(table.columns, row)) for row in table.rows],
    }
