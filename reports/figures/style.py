"""What every figure shares: colours per architecture (fixed, so mamba is the same red in every
figure and every report) and per model size, a marker per sweep when several are compared, and
the small helpers that keep axes, skipped fits and unfinished runs looking alike.

A *series* is what a figure draws as one colour: an architecture, or an (architecture, sweep)
pair when a report compares sweeps (`reports.combine`). Tables name it in a `series` column;
without one, the architecture is the series.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, NullFormatter

from tasks.fit.entries import OK, Interval
from tasks.status import COMPLETED

# The Mamba paper's five families first; any other architecture takes the next unused tab10 colour.
ARCH_COLORS = {
    "transformer": "#1f77b4",
    "transformer++": "#ff7f0e",
    "mamba": "#d62728",
    "hyena": "#2ca02c",
    "rwkv": "#9467bd",
}
SPARE_COLORS = [
    c for c in matplotlib.colormaps["tab10"].colors if matplotlib.colors.to_hex(c) not in ARCH_COLORS.values()
]
SWEEP_MARKERS = ("o", "s", "^", "D", "v", "P")
SWEEP_LINES = ("-", "--", "-.", ":")
SIZE_CMAP = matplotlib.colormaps["viridis"]
# plasma without its last, pale-yellow sixth, which vanishes on white
BUDGET_CMAP = ListedColormap(matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, 256)))
PANEL = (4.6, 3.8)  # inches per panel
NOT_DONE = {"marker": "x", "linestyle": "none", "markersize": 7, "markeredgewidth": 1.5, "clip_on": False}
NOTE = {"fontsize": "small", "color": "#555555"}


@dataclass(frozen=True)
class Palette:
    """Colours and markers of one report, built from its runs table so that every figure agrees."""

    series: list[str]
    arch: dict[str, str]
    sweep: dict[str, int]  # series -> index of its sweep
    sizes: LogNorm

    @classmethod
    def of(cls, runs: pd.DataFrame) -> Palette:
        labels = series_of(runs)
        sweeps = runs["sweep"].astype(str) if "sweep" in runs else pd.Series("", index=runs.index)
        order = list(dict.fromkeys(sweeps))
        first = runs.assign(series_=labels, sweep_=sweeps).drop_duplicates("series_")
        arch = dict(zip(first["series_"], first["arch"].astype(str) if "arch" in runs else first["series_"]))
        sweep = {s: order.index(w) for s, w in zip(first["series_"], first["sweep_"])}
        # Sweeps in the order given, architectures alphabetically within each, as in the tables.
        return cls(sorted(arch, key=lambda s: (sweep[s], arch[s])), arch, sweep, size_norm(runs["n_params"]))

    def color(self, series: str):
        arch = self.arch.get(series, series)
        if arch in ARCH_COLORS:
            return ARCH_COLORS[arch]
        others = sorted({a for a in self.arch.values() if a not in ARCH_COLORS})
        return SPARE_COLORS[others.index(arch) % len(SPARE_COLORS)] if arch in others else "grey"

    def marker(self, series: str) -> str:
        return SWEEP_MARKERS[self.sweep.get(series, 0) % len(SWEEP_MARKERS)]

    def line(self, series: str) -> str:
        return SWEEP_LINES[self.sweep.get(series, 0) % len(SWEEP_LINES)]

    def size_color(self, n_params: float):
        return SIZE_CMAP(self.sizes(n_params))


def series_of(table: pd.DataFrame) -> pd.Series:
    if "series" in table:
        return table["series"].astype(str)
    return table["arch"].astype(str) if "arch" in table else pd.Series("all", index=table.index)


def size_norm(n_params: pd.Series) -> LogNorm:
    lo, hi = float(n_params.min()), float(n_params.max())
    return LogNorm(lo / 1.5, hi * 1.5) if lo == hi else LogNorm(lo, hi)


def completed(runs: pd.DataFrame) -> pd.Series:
    status = runs["status"] if "status" in runs else pd.Series(COMPLETED, index=runs.index)
    return (status == COMPLETED) & np.isfinite(runs["val_loss"].astype(float))


def flops_of(runs: pd.DataFrame) -> pd.Series:
    # The fits' own default (tasks.fit.table) when a table has no flops column.
    derived = 6.0 * runs["n_params"] * runs["tokens"]
    return runs["flops"].fillna(derived) if "flops" in runs else derived


def not_done_label(runs: pd.DataFrame, done: pd.Series) -> str:
    status = runs["status"] if "status" in runs else pd.Series(COMPLETED, index=runs.index)
    counts = status[~done].where(status[~done] != COMPLETED, "no final loss").value_counts().sort_index()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def on_top_edge(ax: Axes, x, color) -> None:
    """Runs without a final loss: x markers on the top edge at their x, never dropped."""
    if len(x):
        ax.plot(x, np.ones(len(x)), color=color, transform=ax.get_xaxis_transform(), **NOT_DONE)


def plain_log_ticks(axis) -> None:
    """Label a log axis of losses 3, 4, 6 rather than 3x10^0; minor ticks too when it spans under two decades."""
    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def log_axes(ax: Axes, x: bool = True, y: bool = True) -> None:
    ax.set(xscale="log" if x else "linear", yscale="log" if y else "linear")
    lo, hi = ax.get_xlim()
    if x and hi > 10 * lo:  # a decade is labelled: 2x10^7, 3x10^7, ... would only collide on a narrow panel
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.2)


def loss_limits(losses: pd.Series) -> tuple[float, float]:
    """Bounds that show every healthy curve but not a diverged one's explosion."""
    finite = losses[np.isfinite(losses) & (losses > 0)]
    if finite.empty:
        return 1.0, 10.0
    return finite.min() * 0.95, min(finite.max(), np.percentile(finite, 99)) * 1.05


def panels(n: int, rows: int = 1, extra_width: float = 0.0, **kw) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of `rows` x max(1, n) panels, as a 2-D array of axes."""
    cols = max(1, n)
    fig = Figure(figsize=(PANEL[0] * cols + extra_width, PANEL[1] * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def wrap(text: str, width: int = 60) -> str:
    return textwrap.fill(text, width)


def message(ax: Axes, text: str) -> None:
    """A panel that has nothing to draw says why, in its middle."""
    ax.text(0.5, 0.5, wrap(text, 45), ha="center", va="center", transform=ax.transAxes, **NOTE)
    ax.set_xticks([])
    ax.set_yticks([])


def footnote(ax: Axes, lines: list[str]) -> None:
    """Why something is missing from a panel, in small print under its x label (not over its data);
    constrained layout makes room for it."""
    if lines:
        ax.annotate(
            "\n".join(wrap(line, 60) for line in lines),
            xy=(0.5, 0.0),
            xycoords=ax.xaxis.label,
            xytext=(0, -4),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize="x-small",
            color=NOTE["color"],
        )


def fit_entry(fits: dict, kind: str, series: str) -> tuple[dict | None, str | None]:
    """(entry, None) for a fit to draw, (None, reason) for one that was skipped, is missing, or failed: an
    L(N, D) fit with a parameter on its bound says nothing about the law, and its curves would pull the
    axes to wherever the bound sent them (the tables and summary still give its numbers)."""
    entry = fits.get(kind, {}).get(series)
    if entry is None:
        return None, "not in the fits"
    if entry.get("status") != OK:
        return None, entry.get("reason", "skipped")
    conv = entry.get("convergence")
    if isinstance(conv, dict) and conv.get("on_bound"):
        return None, f"fit failed: {', '.join(conv['on_bound'])} on a bound, not drawn"
    return entry, None


def data_limits(values, extrapolate: float = 1.0) -> tuple[float, float]:
    """Log-axis bounds of the positive `values`, a factor 2 either side, and `extrapolate` times further
    above (the one decade the laws are drawn past the largest run): what a figure's axes may show."""
    finite = np.asarray([v for v in np.ravel(values) if np.isfinite(v) and v > 0], float)
    if finite.size == 0:
        return 1.0, 10.0
    return float(finite.min()) / 2, float(finite.max()) * 2 * extrapolate


def value(iv: Interval | None) -> float:
    return float("nan") if not iv or iv.get("value") is None else float(iv["value"])


def error_bar(iv: Interval | None) -> tuple[list[float], list[float]] | None:
    """Matplotlib's (below, above) distances from an interval, or None without bootstrap bounds."""
    if not iv or iv.get("lo") is None or iv.get("hi") is None:
        return None
    v = float(iv["value"])
    return [max(v - float(iv["lo"]), 0.0)], [max(float(iv["hi"]) - v, 0.0)]
