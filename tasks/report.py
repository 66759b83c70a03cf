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
from tasks.layout import SWEEP_CONFIG

RECORDED = ("runs.parquet", "curves.parquet", "fits.json")


def load_sweep_results(sweep_dir: Path) -> SweepResults:
    sweep_dir = Path(sweep_dir)
    for name in RECORDED:
        if not (sweep_dir / name).is_file():
            raise FileNotFoundError(
                f"{sweep_dir / name} not found: is {sweep_dir} a sweep folder (outputs/sweeps/NAME)?"
            )
    config = sweep_dir / SWEEP_CONFIG
    return SweepResults(
        name=sweep_dir.name,
        runs=pd.read_parquet(sweep_dir / "runs.parquet"),
        curves=pd.read_parquet(sweep_dir / "curves.parquet"),
        fits=json.loads((sweep_dir / "fits.json").read_text()),
        config=config.read_text() if config.is_file() else None,
    )


def default_report_dir(sweep_dirs: list[Path]) -> Path:
    """A sweep's own report/ folder; for several, <output>/comparisons/<name>+<name>."""
    if len(sweep_dirs) == 1:
        return Path(sweep_dirs[0]) / "report"
    return Path(sweep_dirs[0]).resolve().parent.parent / "comparisons" / "+".join(Path(d).name for d in sweep_dirs)


def report_sweeps(
    sweep_dirs: list[Path], out_dir: Path | None = None, title: str | None = None, pdf: bool = True
) -> dict:
    """Render the report; returns render_report's paths plus the summary Markdown and the runs table
    (a list of row dicts) for Prefect artifacts."""
    sweeps = [load_sweep_results(d) for d in sweep_dirs]
    names = [s.name for s in sweeps]
    if len(set(names)) < len(names):
        raise ValueError(
            f"two of the sweep folders have the same name ({', '.join(names)}); a report tells them apart by name"
        )
    out = Path(out_dir) if out_dir else default_report_dir([Path(d) for d in sweep_dirs])
    result = render_report(sweeps, out, title or " vs ".join(names), pdf=pdf)
    runs, _, fits = combine(sweeps)
    table = runs_table(runs)
    return {
        **result,
        "summary": summary_markdown(runs, fits),
        "table": [dict(zip(table.columns, row)) for row in table.rows],
    }
