"""reports: the rendered report (self-contained HTML, Markdown, figures), several sweeps in one
report, the summary artifact, number formatting."""

import base64
import re

import numpy as np
import pytest

from reports.combine import SweepResults
from reports.figures import FIGURES
from reports.numbers import fmt
from reports.render import render_report
from reports.summary import summary_markdown
from tasks.fit import fit_runs
from tasks.fit.entries import Fits
from tests.reports.conftest import FIT
from tests.reports.synthetic import synthetic_sweep
from tests.tasks.fit.shapes import check_shape


def markdown_section(md: str, heading: str) -> list[str]:
    """The table lines under a Markdown heading."""
    lines = md.split(heading + "\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_html_embeds_every_figure_and_links_nothing(demo_report):
    html = demo_report["html"].read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(FIGURES) and demo_report["failed_figures"] == {}
    for src, png in zip(sources, demo_report["figures"]):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()
    # Opens from disk with no server: nothing but the page's own anchors is referenced.
    assert not re.findall(r'(?:src|href)="(?!data:|#)', html)


def test_markdown_links_the_figure_files(demo_report):
    md = demo_report["md"].read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == [f"figures/{f.stem}.png" for f in FIGURES]
    assert all((demo_report["md"].parent / link).stat().st_size > 10_000 for link in links)


def test_markdown_runs_table_has_one_line_per_run(demo, demo_report):
    rows = markdown_section(demo_report["md"].read_text(), "### All runs")[2:]
    assert len(rows) == len(demo.runs)
    assert {row.split(" | ")[0].lstrip("| ") for row in rows} == set(demo.runs["name"])
    failed = next(row for row in rows if "| failed |" in row)
    assert "training process exited with code 1" in failed


def test_summary_says_what_ran_who_wins_and_the_laws(demo, demo_report):
    md = demo_report["md"].read_text()
    assert "122 runs: 120 completed, 1 diverged, 1 failed." in md
    # mamba's losses are 0.08 below transformer++'s by construction
    assert "the largest compute every architecture ran: **mamba** has the lowest loss" in md
    assert "**mamba** reaches the loss transformer++ reaches" in md
    for arch in ("mamba", "transformer++"):
        b = fmt(demo.fits["loss_vs_compute"][arch]["params"]["b"]["value"])
        assert f"**{arch}**, loss vs compute: L ∝ C^-b with b = {b}" in md
        tpp = fmt(demo.fits["parametric"][arch]["predictions"][0]["tokens_per_param"]["value"])
        assert f"({tpp} tokens per parameter)" in md
    assert "**hyena**, L(N, D): not fitted (2 distinct (n_params, tokens) point(s)" in md
    excluded = markdown_section(md, "### Runs left out of the fits")[2:]
    assert len(excluded) == 2 and any("status diverged" in row for row in excluded)
    assert "```yaml\nname: demo\narchitectures: [mamba, transformer++, hyena]\n```" in md


def test_every_fit_has_one_name_and_frontier_names_only_the_frontier(demo, demo_report):
    check_shape(demo.fits, Fits)  # the demo has every kind of entry: fitted, skipped, dropped points
    md = demo_report["md"].read_text()
    laws = markdown_section(
        md, "### Loss vs compute: L = a · C^-b through the compute frontier (95% bootstrap intervals)"
    )
    assert laws[0] == "| arch | form | a | b | R² | frontier runs | notes |"
    allocation = markdown_section(
        md, next(line for line in md.splitlines() if line.startswith("### Compute-optimal alloc"))
    )
    assert {row.split(" | ")[1] for row in allocation[2:]} == {
        "approach 1",
        "approach 2 (IsoFLOP)",
        "approach 3 (L(N, D))",
    }
    assert "| loss, L(N, D) | loss, loss vs compute |" in md and "held-out, loss vs compute" in md
    for old in ("power_law", "frontier power law", "frontier law", "1: frontier", "approach 1 (frontier)"):
        assert old not in md, old


def tiny_sweep(fitted: bool = True) -> SweepResults:
    """The demo's two hyena runs alone: too few for any fit."""
    runs, curves = synthetic_sweep()
    runs = runs[runs["arch"] == "hyena"]
    curves = curves[curves["run_id"].isin(runs["run_id"])]
    return SweepResults("tiny", runs, curves, fit_runs(runs, FIT) if fitted else {})


def test_every_fit_skipped_still_renders_every_figure_and_no_chromium_no_pdf(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_CHROMIUM", str(tmp_path / "no-such-chromium"))
    out = render_report([tiny_sweep()], tmp_path, "Tiny")
    assert out["failed_figures"] == {}
    md = out["md"].read_text()
    assert md.count("not fitted") == 2 and "skipped:" in md
    assert "<h2>Sweep file" not in out["html"].read_text()
    # The PDF step says what to do; the HTML and Markdown are there all the same.
    assert out["pdf"] is None and "apt-get install -y chromium" in out["pdf_error"]
    assert not (tmp_path / "report.pdf").exists()


def test_report_renders_without_fits(tmp_path):
    out = render_report([tiny_sweep(fitted=False)], tmp_path, "Unfitted", pdf=False)
    assert out["failed_figures"] == {}
    assert len(markdown_section(out["md"].read_text(), "### All runs")[2:]) == 2
    assert "No scaling laws were fitted." in out["md"].read_text()


def test_summary_markdown_is_the_summary_and_runs_table(demo):
    text = summary_markdown(demo.runs, demo.fits)
    assert text.startswith("- 122 runs: 120 completed, 1 diverged, 1 failed.")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(demo.runs)


@pytest.mark.parametrize(
    "value, text",
    [
        (1.234e19, "1.23e19"),
        (3.4567, "3.46"),
        (1520.0, "1520"),
        (3e-3, "3e-3"),
        (1.2e6, "1.2e6"),
        (0.0123, "0.0123"),
        (np.float32(2.5), "2.5"),
        (np.nan, "–"),
        (None, "–"),
        ("x", "x"),
    ],
)
def test_fmt(value, text):
    assert fmt(value) == text
