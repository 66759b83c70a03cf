"""tasks.report and `scaling report`: reports re-rendered from recorded sweeps, alone or several together."""

import json

import pytest

from cli import main
from reports.combine import SweepResults
from reports.tables import excluded_table, fit_tables, markdown_table, runs_table
from tasks.config import FitConfig
from tasks.fit import fit_runs
from tasks.layout import SweepDir
from tasks.report import report_sweeps
from tests.reports.synthetic import synthetic_sweep

FIT = FitConfig(budgets=[1e19], starts=8, bootstrap=20)


def record(folder, name: str, offset: float = 0.0):
    """A sweep folder as the flow leaves it: runs.parquet, curves.parquet, fits.json, sweep.yaml."""
    sweep_dir = folder / "sweeps" / name
    sweep_dir.mkdir(parents=True)
    runs, curves = synthetic_sweep(name, offset=offset, lrs=(3e-3,))
    runs.to_parquet(sweep_dir / "runs.parquet")
    curves.to_parquet(sweep_dir / "curves.parquet")
    fits = fit_runs(runs, FIT)
    (sweep_dir / "fits.json").write_text(json.dumps(fits))
    (sweep_dir / "sweep.yaml").write_text(f"name: {name}\n")
    return sweep_dir, SweepResults(name, runs, curves, fits, f"name: {name}\n")


def tables(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|")]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return record(tmp_path_factory.mktemp("out"), "alpha")


def test_rerendering_from_parquet_gives_the_same_tables(recorded):
    sweep_dir, in_memory = recorded
    first = report_sweeps([SweepDir(sweep_dir)], pdf=False)
    assert first["html"] == sweep_dir / "report" / "report.html" and first["failed_figures"] == {}
    md, html = first["md"].read_text(), first["html"].read_text()
    # The tables of the tables and fits the sweep had in memory, before Parquet and JSON
    expected = [*fit_tables(in_memory.fits), runs_table(in_memory.runs), excluded_table(in_memory.fits)]
    assert tables(md) == [line for t in expected if t.rows for line in markdown_table(t).splitlines()]
    assert len(first["table"]) == len(in_memory.runs) and "## Sweep file\n\n```yaml\nname: alpha\n```" in md
    for path in (first["md"], first["html"], *first["figures"]):
        path.unlink()
    again = report_sweeps([SweepDir(sweep_dir)], pdf=False)
    assert again["md"].read_text() == md and again["html"].read_text() == html  # figures included, byte for byte
    assert again["table"] == first["table"]


def markdown_section(md: str, heading: str) -> list[str]:
    lines = md.split(heading + "\n", 1)[1].splitlines()
    return [line for line in lines[: next(i for i, x in enumerate(lines) if x.startswith("#"))] if line.startswith("|")]


def test_scaling_report_puts_several_sweeps_in_one_report(recorded, capsys):
    sweep_dir, _ = recorded
    other, _ = record(sweep_dir.parents[1], "beta", offset=0.2)
    assert main(["report", str(sweep_dir), str(other), "--no-pdf"]) == 0
    out = sweep_dir.parents[1] / "comparisons" / "alpha+beta"
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md.startswith("# alpha vs beta")
    assert "84 runs: 80 completed, 2 diverged, 2 failed (alpha: 42, beta: 42)." in md
    assert "**mamba (alpha)**" in md and "**transformer++ (beta)**" in md
    rows = markdown_section(md, "### All runs")
    assert rows[0].startswith("| run | sweep | status |") and len(rows) - 2 == 84
    laws = markdown_section(
        md, "### Loss vs compute: L = a · C^-b through the compute frontier (95% bootstrap intervals)"
    )
    assert {row.split(" | ")[0].lstrip("| ") for row in laws[2:]} == {
        f"{arch} ({sweep})" for arch in ("hyena", "mamba", "transformer++") for sweep in ("alpha", "beta")
    }
    excluded = markdown_section(md, "### Runs left out of the fits")
    assert excluded[0] == "| sweep | run_id | name | reason |" and len(excluded) - 2 == 4
    assert "## Sweep file: beta" in md


def test_scaling_report_of_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "runs.parquet not found" in capsys.readouterr().err
