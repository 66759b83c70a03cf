"""Renders a report of one sweep, or of several on the same axes, into a folder:

    report.html     one self-contained page: figures embedded as data URIs, opens from disk
    report.md       the same summary and tables, figures linked from figures/
    report.pdf      report.html printed by headless Chromium (reports.pdf); skipped, with the
                    reason in the result, when Chromium is missing
    figures/*.png   every figure, for the Markdown and for MLflow

    render_report([SweepResults("pile", runs, curves, fits, config_yaml)], Path("outputs/sweeps/pile/report"), "Pile")

Inputs are the collect stage's tables and the fits dict of `tasks.fit.fit_runs` (or its JSON).
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from matplotlib.figure import Figure

from reports.combine import SweepResults, combine
from reports.figures import FIGURES
from reports.figures.style import message
from reports.pdf import PdfError, print_pdf
from reports.summary import summary_lines
from reports.tables import excluded_table, fit_tables, markdown_table, runs_table

log = logging.getLogger(__name__)

DPI = 110
TEMPLATES = Path(__file__).parent / "templates"


def render_report(sweeps: list[SweepResults], out_dir: Path, title: str, pdf: bool = True) -> dict:
    """Writes the report into `out_dir`. Returns {'html', 'md', 'pdf' (None without one), 'pdf_error'
    (why not, or None), 'figures' (PNG paths), 'failed_figures' ({stem: error})}."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    runs, curves, fits = combine(sweeps)
    rendered, failed = [], {}
    for spec in FIGURES:
        try:
            fig = spec.draw(runs, curves, fits)
        except Exception as err:  # one figure's bug on odd data must not cost the whole report
            log.exception("figure %s failed", spec.stem)
            failed[spec.stem] = f"{type(err).__name__}: {err}"
            fig = _failed_figure(spec.stem, failed[spec.stem])
        path = out_dir / "figures" / f"{spec.stem}.png"
        # No Software/date metadata: the same inputs give the same bytes.
        fig.savefig(path, dpi=DPI, metadata={"Software": None})
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        rendered.append(
            {
                "id": spec.stem,
                "src": f"figures/{spec.stem}.png",
                "caption": spec.caption,
                "path": path,
                "data_uri": f"data:image/png;base64,{data}",
            }
        )
    summary = summary_lines(runs, fits) + [f"⚠ Figure {stem} could not be drawn ({e})." for stem, e in failed.items()]
    context = {
        "title": title,
        "summary": summary,
        "figures": rendered,
        "fit_tables": fit_tables(fits),
        "runs_table": runs_table(runs),
        "excluded_table": excluded_table(fits),
        "source": fits.get("source"),
        "configs": [(s.name, s.config) for s in sweeps if s.config],
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
    result = {
        "html": html,
        "md": md,
        "pdf": None,
        "pdf_error": None,
        "figures": [f["path"] for f in rendered],
        "failed_figures": failed,
    }
    if pdf:
        try:
            result["pdf"] = print_pdf(html, out_dir / "report.pdf")
        except PdfError as err:
            result["pdf_error"] = str(err)
    return result


def _failed_figure(stem: str, error: str) -> Figure:
    fig = Figure(figsize=(6, 2))
    message(fig.add_subplot(), f"figure {stem} could not be drawn: {error}")
    return fig


def _inline_markdown(text: str) -> Markup:
    """The summary's only Markdown, **bold**, as HTML, the rest escaped."""
    return Markup(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", str(escape(text))))
