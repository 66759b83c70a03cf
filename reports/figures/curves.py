"""Training dynamics: loss curves against tokens, and final loss against the learning rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from reports.figures.style import (
    NOT_DONE,
    SIZE_CMAP,
    SWEEP_LINES,
    Palette,
    completed,
    error_bar,
    fit_entry,
    footnote,
    log_axes,
    loss_limits,
    message,
    not_done_label,
    on_top_edge,
    panels,
    plain_log_ticks,
    series_of,
    value,
)
from reports.numbers import fmt
from tasks.fit.entries import LAW, LEARNING_RATE, OK


def loss_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """Training loss (top row) and validation loss (bottom row) against tokens seen, one column per
    series, coloured by parameter count; line style by peak learning rate. A curve that went
    non-finite ends in an x."""
    palette = Palette.of(runs)
    labels = series_of(curves)
    shown = [s for s in palette.series if (labels == s).any()]
    fig, axes = panels(len(shown), rows=2, extra_width=1.2, sharex="col", sharey="row")
    if not shown:
        message(axes[0, 0], "no loss curves were recorded")
        axes[1, 0].set_axis_off()
        return fig
    lrs = sorted(curves["lr"].dropna().unique()) if "lr" in curves else []
    style = {lr: SWEEP_LINES[i % len(SWEEP_LINES)] for i, lr in enumerate(lrs)}
    for col, series in enumerate(shown):
        for _, run in curves[labels == series].groupby("run_id", sort=True):
            run = run.sort_values("step")
            kw = {"color": palette.size_color(run["n_params"].iloc[0]), "linestyle": style.get(run["lr"].iloc[0], "-")}
            for row, column in ((0, "train_loss"), (1, "val_loss")):
                finite = run[np.isfinite(run[column])]
                ax = axes[row, col]
                ax.plot(finite["tokens_seen"], finite[column], linewidth=1.2, marker="." if row else None, **kw)
                if row == 0 and len(finite) < len(run) and len(finite):
                    ax.plot(finite["tokens_seen"].iloc[-1], finite[column].iloc[-1], color=kw["color"], **NOT_DONE)
        axes[0, col].set_title(series)
        axes[1, col].set_xlabel("tokens seen")
        for row in (0, 1):
            log_axes(axes[row, col])
    for row, (column, label) in enumerate((("train_loss", "training loss"), ("val_loss", "validation loss"))):
        axes[row, 0].set_ylabel(label)
        axes[row, 0].set_ylim(*loss_limits(curves[column]))
        plain_log_ticks(axes[row, 0].yaxis)
    fig.colorbar(ScalarMappable(norm=palette.sizes, cmap=SIZE_CMAP), ax=list(axes.ravel()), label="parameters N")
    if len(lrs) > 1:
        handles = [Line2D([], [], color="grey", linestyle=style[lr], label=f"lr {fmt(lr)}") for lr in lrs]
        axes[0, -1].legend(handles=handles, fontsize="small", loc="upper right")
    return fig


def loss_vs_lr(runs: pd.DataFrame, fits: dict) -> Figure:
    """Final validation loss against peak learning rate, one panel per series, one line per (N, D)
    coloured by size (seeds averaged). The fitted optimum of each (N, D) (the vertex of a quadratic
    in log lr, tasks.fit.learning_rate) is a star with its 95% interval; where there is none, the
    best run is ringed, and the panel says why."""
    palette = Palette.of(runs)
    labels = series_of(runs)
    fig, axes = panels(len(palette.series), extra_width=2.6, sharey=True)
    axes = axes[0]
    if not palette.series or "lr" not in runs:
        message(axes[0], "no learning rates in the runs table")
        return fig
    done = completed(runs)
    for ax, series in zip(axes, palette.series):
        mine = runs[labels == series]
        fit, reason = fit_entry(fits, LEARNING_RATE, series)
        optima = {(p["n_params"], p["tokens"]): p for p in (fit or {}).get("points", []) if p["status"] == OK}
        for (n_params, tokens), point in mine.groupby(["n_params", "tokens"], sort=True):
            color = palette.size_color(n_params)
            mean = point[done[point.index]].groupby("lr")["val_loss"].mean()
            ax.plot(mean.index, mean.values, color=color, marker=palette.marker(series), markersize=4)
            on_top_edge(ax, point.loc[~done[point.index], "lr"], color)
            opt = optima.get((float(n_params), float(tokens)))
            if opt:
                ax.errorbar(
                    value(opt["lr_opt"]),
                    value(opt["loss_opt"]),
                    xerr=error_bar(opt["lr_opt"]),
                    color=color,
                    marker="*",
                    markersize=13,
                    markeredgecolor="black",
                    capsize=2,
                    zorder=4,
                )
            elif len(mean):
                ax.plot(
                    mean.idxmin(),
                    mean.min(),
                    marker="o",
                    markersize=11,
                    markerfacecolor="none",
                    markeredgecolor="black",
                    linestyle="none",
                    zorder=4,
                )
        law = (fit or {}).get(LAW, {})
        title = series
        if law.get("status") == OK:
            title += f"\nlr_opt ∝ N^-p, p = {fmt(value(law['p']))}"
        ax.set_title(title)
        log_axes(ax)
        lrs = sorted(mine["lr"].dropna().unique())
        ax.set_xticks(lrs, [fmt(lr) for lr in lrs])  # the rates swept, not powers of ten
        ax.set_xlabel("peak learning rate")
        footnote(ax, [f"no fitted optimum: {reason}"] if reason else [])
    axes[0].set_ylabel("final validation loss")
    plain_log_ticks(axes[0].yaxis)
    fig.colorbar(ScalarMappable(norm=palette.sizes, cmap=SIZE_CMAP), ax=list(axes), label="parameters N")
    fig.legend(handles=_lr_legend(runs, done), loc="outside right upper", fontsize="small")
    return fig


def _lr_legend(runs: pd.DataFrame, done: pd.Series) -> list[Line2D]:
    optimum = {"marker": "*", "markersize": 11, "markeredgecolor": "black", "linestyle": "none"}
    best = {"marker": "o", "markersize": 9, "markerfacecolor": "none", "linestyle": "none"}
    handles = [
        Line2D([], [], color="grey", **optimum, label="fitted optimum (95%)"),
        Line2D([], [], color="black", **best, label="best run (no fit)"),
    ]
    if (~done).any():
        handles.append(Line2D([], [], color="grey", **NOT_DONE, label=not_done_label(runs, done)))
    return handles
