"""Renders a sweep's report into a folder: figures/*.png, report.html and report.md.

    render_report(runs, curves, fits, Path("outputs/pile/report"), "Pile scaling sweep")

`runs` and `curves` are the collect stage's tables, `fits` the dict of
`tasks.fit.fit_runs` (or its JSON). Both documents hold the same summary, figures
(linked relatively, so the folder can be moved or logged as one artifact) and tables.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from reports import figures
from reports.summary import (
    allocation_table,
    checks_table,
    excluded_table,
    markdown_table,
    parametric_table,
    power_law_table,
    predictions_table,
    runs_table,
    summary_lines,
)

DPI = 120
TEMPLATES = Path(__file__).parent / "templates"

# (file stem, caption, how to draw it from runs, curves, fits)
FIGURES = (
    ("loss_vs_flops", "Final validation loss vs training compute, with the frontier power law and its 95% band.",
     lambda runs, curves, fits: figures.loss_vs_flops(runs, fits)),
    ("parametric_fit", "Observed vs predicted final loss under L(N, D) = E + A/N^α + B/D^β, one point per (N, D) at its best learning rate.",
     lambda runs, curves, fits: figures.parametric_fit(runs, fits)),
    ("loss_vs_lr", "Final validation loss vs peak learning rate.",
     lambda runs, curves, fits: figures.loss_vs_lr(runs)),
    ("loss_curves", "Training and validation loss curves.",
     lambda runs, curves, fits: figures.loss_curves(curves)),
)


def render_report(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    fits: dict,
    out_dir: Path,
    title: str,
    sweep_yaml: str | None = None,
) -> dict[str, Path]:
    """Writes the report into `out_dir`; returns {'html': path, 'md': path, 'figures': [png paths]}."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    rendered = []
    for stem, caption, draw in FIGURES:
        path = out_dir / "figures" / f"{stem}.png"
        draw(runs, curves, fits).savefig(path, dpi=DPI)
        rendered.append({"src": f"figures/{stem}.png", "caption": caption, "path": path})
    context = {
        "title": title,
        "summary": summary_lines(runs, fits),
        "figures": rendered,
        "fit_tables": [power_law_table(fits), parametric_table(fits), predictions_table(fits), allocation_table(fits),
                       checks_table(fits)],
        "runs_table": runs_table(runs),
        "excluded_table": excluded_table(fits),
        "source": fits.get("source"),
        "sweep_yaml": sweep_yaml,
    }
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=lambda name: name.endswith(".html.j2"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["inline_md"] = _inline_markdown
    env.filters["md_table"] = markdown_table
    html, md = out_dir / "report.html", out_dir / "report.md"
    html.write_text(env.get_template("report.html.j2").render(**context), encoding="utf-8")
    md.write_text(env.get_template("report.md.j2").render(**context), encoding="utf-8")
    return {"html": html, "md": md, "figures": [f["path"] for f in rendered]}


def _inline_markdown(text: str) -> Markup:
    """The summary's only Markdown, **bold**, as HTML, the rest escaped."""
    return Markup(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", str(escape(text))))
