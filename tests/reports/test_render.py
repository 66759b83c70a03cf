"""reports: the rendered report (HTML, Markdown, figures), the summary artifact, number formatting."""

import re

import numpy as np
import pandas as pd
import pytest

from reports.render import render_report
from reports.summary import fmt, summary_markdown
from tasks.config import FitConfig
from tasks.fit import fit_runs

BUDGETS = [1e18, 1e19]
FIT = FitConfig(budgets=BUDGETS, starts=16, bootstrap=50)


def synthetic_sweep(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two archs x 3 sizes x 3 tokens-per-parameter ratios, one diverged and one failed run; curves every step."""
    rng = np.random.default_rng(seed)
    runs, curves = [], []
    for arch, offset in (("mamba", 0.0), ("transformer++", 0.1)):
        for size, n in (("t1", 1e6), ("t2", 4e6), ("t3", 1.6e7)):
            for ratio in (10, 20, 40):
                d = n * ratio
                loss = (1.8 + offset + 400 / n**0.34 + 400 / d**0.3) * np.exp(3e-3 * rng.standard_normal())
                run_id = f"{arch}-{size}-{ratio}"
                status = {"mamba-t3-40": "diverged", "transformer++-t1-10": "failed"}.get(run_id, "completed")
                steps = np.arange(1, 21)
                seen = steps * d / 20
                curve = loss + 6.0 * (seen / d) ** -0.5 * np.exp(-steps / 4)
                if status == "diverged":
                    curve[12:] = np.inf
                curves.append(pd.DataFrame({
                    "sweep": "demo", "run_id": run_id, "arch": arch, "n_params": n, "n_params_nonembed": 0.8 * n,
                    "tokens": d, "lr": 3e-3, "step": steps, "tokens_seen": seen, "flops": 6 * n * seen,
                    "train_loss": curve, "val_loss": np.where(steps % 5 == 0, curve, np.nan), "lr_now": 3e-3,
                    "grad_norm": 1.0, "tokens_per_s": 1e5, "wall_s": steps * 0.1,
                }))
                done = status == "completed"
                runs.append({
                    "sweep": "demo", "run_id": run_id, "name": f"{arch}-{size}-{ratio}x-lr3e-3", "arch": arch,
                    "size": size, "n_layer": 2, "d_model": 64, "n_params": n, "n_params_nonembed": 0.8 * n,
                    "tokens": d, "lr": 3e-3, "seed": 0, "steps": 20, "batch_tokens": d / 20, "seq_len": 128,
                    "flops": 6 * n * d, "train_loss": loss if done else np.nan, "val_loss": loss if done else np.nan,
                    "wall_s": n * ratio / 1e6, "status": status,
                })
    return pd.DataFrame(runs), pd.concat(curves, ignore_index=True)


@pytest.fixture(scope="module")
def sweep():
    runs, curves = synthetic_sweep()
    return runs, curves, fit_runs(runs, FIT)


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    runs, curves, fits = sweep
    return render_report(runs, curves, fits, tmp_path_factory.mktemp("report"), "Demo sweep", "name: demo\n")


def markdown_section(md: str, heading: str) -> list[str]:
    """The table lines under a Markdown heading."""
    lines = md.split(heading + "\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_report_files_and_figure_links(report):
    html_path, md_path = report["html"], report["md"]
    html, md = html_path.read_text(), md_path.read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(report["figures"]) == 4
    for src in sources:
        assert not src.startswith("/")
        assert (html_path.parent / src).stat().st_size > 10_000
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md) == sources
    assert sorted(report["figures"]) == sorted(html_path.parent / s for s in sources)


def test_markdown_runs_table_has_one_line_per_run(sweep, report):
    runs = sweep[0]
    rows = markdown_section(report["md"].read_text(), "### All runs")[2:]
    assert len(rows) == len(runs)
    assert {row.split(" | ")[0].lstrip("| ") for row in rows} == set(runs["name"])


def test_report_states_summary_fits_and_exclusions(sweep, report):
    md = report["md"].read_text()
    assert "18 runs: 16 completed, 1 diverged, 1 failed." in md
    excluded = markdown_section(md, "### Runs left out of the fits")[2:]
    assert len(excluded) == 2 and any("status diverged" in row for row in excluded)
    for arch in ("mamba", "transformer++"):
        b = fmt(sweep[2]["power_law"][arch]["params"]["b"]["value"])
        assert f"**{arch}**, loss vs compute: L ∝ C^-b with b = {b}" in md
    assert "tokens per parameter" in md
    assert "```yaml\nname: demo\n```" in md


def test_rerendering_gives_identical_documents(sweep, report, tmp_path):
    runs, curves, fits = sweep
    again = render_report(runs, curves, fits, tmp_path, "Demo sweep", "name: demo\n")
    assert again["md"].read_text() == report["md"].read_text()
    assert again["html"].read_text() == report["html"].read_text()


def test_report_renders_when_every_fit_is_skipped(tmp_path):
    runs, curves = synthetic_sweep()
    runs = runs[(runs["size"] == "t1") & (runs["tokens"] != 20 * runs["n_params"])]
    curves = curves[curves["run_id"].isin(runs["run_id"])]
    fits = fit_runs(runs, FIT)

    out = render_report(runs, curves, fits, tmp_path, "Tiny sweep")

    md = out["md"].read_text()
    assert md.count("not fitted") == 4
    assert "skipped:" in md
    assert "<h2>Sweep file</h2>" not in out["html"].read_text()
    assert all(path.exists() for path in out["figures"])


def test_report_renders_without_fits(tmp_path):
    runs, curves = synthetic_sweep()
    out = render_report(runs, curves, {}, tmp_path, "Unfitted sweep")
    assert len(markdown_section(out["md"].read_text(), "### All runs")[2:]) == len(runs)


def test_summary_markdown_is_the_summary_and_runs_table(sweep):
    runs, _, fits = sweep
    text = summary_markdown(runs, fits)
    assert text.startswith("- 18 runs: 16 completed, 1 diverged, 1 failed.")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(runs)


@pytest.mark.parametrize("value, text", [
    (1.234e19, "1.23e19"), (3.4567, "3.46"), (1520.0, "1520"), (3e-3, "3e-3"), (1.2e6, "1.2e6"),
    (0.0123, "0.0123"), (np.float32(2.5), "2.5"), (np.nan, "–"), (None, "–"), ("x", "x"),
])
def test_fmt(value, text):
    assert fmt(value) == text
