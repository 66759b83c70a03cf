"""reports.figures: each figure draws the fitted laws where they are, and says why where they are not."""

import matplotlib.colors
import numpy as np
import pytest
from matplotlib.text import Text

from reports.combine import SweepResults, combine
from reports.figures import FIGURES
from reports.figures.style import ARCH_COLORS, Palette

DRAW = {spec.stem: spec.draw for spec in FIGURES}
# Which fits each figure shows; the demo's hyena has too few runs for any of them.
SHOWS = {
    "loss_vs_flops": ["loss_vs_compute"],
    "isoflop": ["approach2"],
    "loss_contours": ["parametric"],
    "allocation": ["approach1", "approach2", "parametric"],
    "loss_vs_lr": ["learning_rate"],
    "residuals": ["loss_vs_compute", "parametric", "approach1", "approach2", "learning_rate"],
}


def text_of(fig) -> str:
    """Every word drawn on the figure (titles, labels, legends, notes), whitespace collapsed."""
    return " ".join(" ".join(t.get_text() for t in fig.findobj(Text)).split())


def lines_of(fig, color: str, **props) -> list:
    return [
        line
        for ax in fig.axes
        for line in ax.get_lines()
        if matplotlib.colors.same_color(line.get_color(), color)
        and all(getattr(line, f"get_{k}")() == v for k, v in props.items())
    ]


def panel(fig, title: str):
    return next(ax for ax in fig.axes if ax.get_title() == title)


@pytest.fixture(scope="module")
def tables(demo):
    return demo.runs, demo.curves, demo.fits


@pytest.mark.parametrize("stem", sorted(SHOWS))
def test_a_skipped_fit_leaves_its_reason_on_the_figure(tables, stem):
    runs, curves, fits = tables
    text = text_of(DRAW[stem](runs, curves, fits))
    for kind in SHOWS[stem]:
        assert fits[kind]["hyena"]["status"] == "skipped"
        assert " ".join(fits[kind]["hyena"]["reason"].split()) in text, (stem, kind)


def test_held_out_figure_states_errors_and_reasons(tables):
    runs, curves, fits = tables
    text = text_of(DRAW["held_out"](runs, curves, fits))
    assert "mamba, held out 1e18 FLOPs: L(N, D) mean |error|" in text
    assert " ".join(fits["held_out"]["hyena"]["parametric"]["reason"].split()) in text


def test_loss_vs_compute_law_is_drawn_in_the_arch_colour_and_extrapolated_a_decade(tables):
    runs, curves, fits = tables
    fig = DRAW["loss_vs_flops"](runs, curves, fits)
    law = fits["loss_vs_compute"]["mamba"]
    a, b = law["params"]["a"]["value"], law["params"]["b"]["value"]
    solid, dashed = (lines_of(fig, ARCH_COLORS["mamba"], linestyle=s)[0] for s in ("-", "--"))
    for line in (solid, dashed):
        x, y = line.get_data()
        np.testing.assert_allclose(y, a * x**-b, rtol=1e-9)
    top = max(p["flops"] for p in law["points"])
    assert dashed.get_xdata()[-1] == pytest.approx(10 * top)
    assert "transformer++: L =" in text_of(fig)


def test_compute_optimal_line_follows_the_fitted_allocation(tables):
    runs, curves, fits = tables
    fig = DRAW["loss_contours"](runs, curves, fits)
    fit = fits["parametric"]["transformer++"]
    g, a = fit["exponents"]["G"]["value"], fit["exponents"]["a"]["value"]
    n, d = next(line for line in panel(fig, "transformer++").get_lines() if line.get_linewidth() == 1.8).get_data()
    np.testing.assert_allclose(n, g * (6 * n * d) ** a, rtol=1e-9)


def test_isoflop_minima_are_the_fitted_ones(tables):
    runs, curves, fits = tables
    fig = DRAW["isoflop"](runs, curves, fits)
    stars = sorted(float(line.get_xdata()[0]) for line in panel(fig, "mamba").get_lines() if line.get_marker() == "*")
    fitted = sorted(p["n_opt"]["value"] for p in fits["approach2"]["mamba"]["profiles"] if p["status"] == "ok")
    np.testing.assert_allclose(stars, fitted, rtol=1e-12)


def test_every_learning_rate_optimum_is_marked(tables):
    runs, curves, fits = tables
    fig = DRAW["loss_vs_lr"](runs, curves, fits)
    mamba = next(ax for ax in fig.axes if ax.get_title().startswith("mamba"))
    stars = [line for line in mamba.get_lines() if line.get_marker() == "*"]
    assert len(stars) == sum(p["status"] == "ok" for p in fits["learning_rate"]["mamba"]["points"]) > 0


def test_colours_follow_the_architecture_and_markers_the_sweep(demo):
    other = SweepResults("other", demo.runs, demo.curves, demo.fits)
    runs, _, _ = combine([demo, other])
    palette = Palette.of(runs)
    assert palette.series[:3] == ["hyena (demo)", "mamba (demo)", "transformer++ (demo)"]
    assert palette.color("mamba (demo)") == palette.color("mamba (other)") == ARCH_COLORS["mamba"]
    assert palette.marker("mamba (demo)") != palette.marker("mamba (other)")
    assert Palette.of(demo.runs).color("mamba") == ARCH_COLORS["mamba"]
