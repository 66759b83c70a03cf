"""reports.figures: each figure draws the fitted laws where they are, and says why where they are not."""

import copy

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


@pytest.fixture(scope="module")
def failed(demo):
    """The demo's fits with transformer++'s L(N, D) as the sample sweep's was: on its bounds, with an
    "optimum" at 2e-3 parameters."""
    fits = copy.deepcopy(demo.fits)
    law = fits["parametric"]["transformer++"]
    law["convergence"] |= {"state": "on a bound", "converged": False, "on_bound": ["alpha", "E"]}
    law["exponents"]["G"]["value"], law["exponents"]["a"]["value"] = 1e-12, 0.9
    return demo.runs, demo.curves, fits


def test_a_fit_on_its_bounds_is_not_drawn_and_says_why_in_place(failed, tables):
    runs, curves, fits = failed
    contours = DRAW["loss_contours"](runs, curves, fits)
    ax = panel(contours, "transformer++")
    assert not [line for line in ax.get_lines() if line.get_linewidth() == 1.8]  # no compute-optimal line
    assert "fit failed: alpha, E on a bound, not drawn" in text_of(contours)
    allocation = DRAW["allocation"](runs, curves, fits)
    assert not laws_of(allocation, "-")  # approach 3's style
    assert laws_of(allocation, "--")  # approach 2's stays
    assert "fit failed: alpha, E on a bound, not drawn" in text_of(allocation)
    # The negative control: the converged fit is drawn.
    assert laws_of(DRAW["allocation"](*tables), "-")


def laws_of(fig, style: str) -> list:
    """transformer++'s fitted lines in `style` (lines over many points: not the single-point optima)."""
    return [line for line in lines_of(fig, ARCH_COLORS["transformer++"], linestyle=style) if len(line.get_xdata()) > 1]


@pytest.mark.parametrize("fitted", ["failed", "tables"])
@pytest.mark.parametrize("stem", ["loss_contours", "allocation"])
def test_axes_stay_on_the_runs_and_one_decade_past_them(request, fitted, stem):
    runs, curves, fits = request.getfixturevalue(fitted)
    done = runs["status"] == "completed"
    n_max, d_max = runs.loc[done, "n_params"].max(), runs.loc[done, "tokens"].max()
    n_min, d_min = runs.loc[done, "n_params"].min(), runs.loc[done, "tokens"].min()
    fig = DRAW[stem](runs, curves, fits)
    for ax in fig.axes:
        if ax.get_ylabel().startswith("tokens") or ax.get_ylabel().startswith("compute-optimal tokens"):
            lo, hi = ax.get_ylim()
            assert d_min / 2 <= lo * 1.0001 and hi <= d_max * 20 * 1.0001, (ax.get_title(), lo, hi)
        if ax.get_ylabel().startswith("compute-optimal parameters"):
            lo, hi = ax.get_ylim()
            assert n_min / 2 <= lo * 1.0001 and hi <= n_max * 20 * 1.0001, (lo, hi)
        if ax.get_xlabel() == "parameters N":
            lo, hi = ax.get_xlim()
            assert n_min / 2 <= lo * 1.0001 and hi <= n_max * 20 * 1.0001, (ax.get_title(), lo, hi)
