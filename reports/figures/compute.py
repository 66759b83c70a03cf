"""Compute: final loss (and perplexity) against training FLOPs with the fitted loss-vs-compute laws
(the Mamba paper's Figure 4), and the compute-optimal N_opt and D_opt against compute by each approach."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from reports.figures.style import (
    NOT_DONE,
    Palette,
    completed,
    data_limits,
    error_bar,
    fit_entry,
    flops_of,
    log_axes,
    not_done_label,
    on_top_edge,
    panels,
    plain_log_ticks,
    series_of,
    value,
    wrap,
)
from reports.names import APPROACH_NAMES
from reports.numbers import fmt
from tasks.fit.entries import APPROACH1, APPROACH2, LOSS_VS_COMPUTE, OK, PARAMETRIC, LossVsCompute

EXTRAPOLATE = 10.0  # the laws are drawn one decade of compute past the largest run
APPROACHES = tuple(
    (kind, APPROACH_NAMES[kind], style) for kind, style in ((APPROACH1, ":"), (APPROACH2, "--"), (PARAMETRIC, "-"))
)


def loss_vs_flops(runs: pd.DataFrame, fits: dict) -> Figure:
    """Final validation loss (left) and perplexity (right) against training FLOPs, log-log. The compute
    frontier's runs filled, the others hollow; the fitted L = a C^-b solid over the runs and dashed
    for one decade beyond, with its 95% bootstrap band and the predictions at the budgets in view."""
    palette = Palette.of(runs)
    labels, flops, done = series_of(runs), flops_of(runs), completed(runs)
    fig, axes = panels(2, extra_width=2.8, sharex=True)
    handles = []
    for series in palette.series:
        color, marker = palette.color(series), palette.marker(series)
        mine = labels == series
        fit, reason = fit_entry(fits, LOSS_VS_COMPUTE, series)
        front = runs["run_id"].astype(str).isin({str(p["run_id"]) for p in (fit or {}).get("points", [])}) & mine
        for ax, to_y in zip(axes[0], (np.asarray, np.exp)):
            hollow = mine & done & ~front
            ax.scatter(
                flops[hollow],
                to_y(runs["val_loss"][hollow]),
                facecolors="none",
                edgecolors=color,
                marker=marker,
                alpha=0.6,
            )
            ax.scatter(flops[front], to_y(runs["val_loss"][front]), color=color, marker=marker, zorder=3)
            on_top_edge(ax, flops[mine & ~done], color)
            if fit:
                _draw_law(ax, fit, color, to_y)
        if fit:
            a, b = value(fit["params"]["a"]), value(fit["params"]["b"])
            handles.append(Line2D([], [], color=color, marker=marker, label=f"{series}: L = {fmt(a)} · C^-{fmt(b)}"))
        else:
            handles.append(
                Line2D(
                    [],
                    [],
                    color=color,
                    marker=marker,
                    linestyle="none",
                    label=wrap(f"{series}: not fitted ({reason})", 45),
                )
            )
    for ax, label in zip(axes[0], ("final validation loss", "perplexity")):
        log_axes(ax)
        plain_log_ticks(ax.yaxis)
        ax.set(xlabel="training FLOPs C", ylabel=label)
    axes[0, 0].set_title("Loss vs compute")
    axes[0, 1].set_title("Perplexity vs compute")
    handles += [
        Line2D([], [], color="grey", linestyle="--", label="extrapolated (one decade)"),
        Line2D([], [], color="grey", marker="d", linestyle="none", label="prediction at a budget (95%)"),
    ]
    if (~done).any():
        handles.append(Line2D([], [], color="grey", **NOT_DONE, label=f"{not_done_label(runs, done)} (no final loss)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    return fig


def _draw_law(ax, fit: LossVsCompute, color, to_y) -> None:
    a, b = value(fit["params"]["a"]), value(fit["params"]["b"])
    ran = [p["flops"] for p in fit["points"]]
    lo, top = min(ran), max(ran)
    inside = np.geomspace(lo / 2, top, 40)
    beyond = np.geomspace(top, top * EXTRAPOLATE, 20)
    ax.plot(inside, to_y(a * inside**-b), color=color, linewidth=1.5)
    ax.plot(beyond, to_y(a * beyond**-b), color=color, linewidth=1.5, linestyle="--")
    band = fit.get("band") or {}
    if band.get("lo") is not None:
        grid, blo, bhi = (np.asarray(band[k], float) for k in ("flops", "lo", "hi"))
        keep = np.isfinite(blo) & np.isfinite(bhi)
        ax.fill_between(grid[keep], to_y(blo[keep]), to_y(bhi[keep]), color=color, alpha=0.15, linewidth=0)
    for pred in fit.get("predictions", []):
        if pred["flops"] <= top * EXTRAPOLATE:
            loss = pred["loss"]
            shown = {k: None if loss.get(k) is None else float(to_y(loss[k])) for k in ("value", "lo", "hi")}
            ax.errorbar(
                pred["flops"], shown["value"], yerr=error_bar(shown), color=color, marker="d", capsize=3, zorder=4
            )


def allocation(runs: pd.DataFrame, fits: dict) -> Figure:
    """N_opt (left) and D_opt (right) against compute by each Chinchilla approach: the fitted power
    laws as lines (style by approach), the points they went through (approach 1's frontier runs,
    approach 2's parabola minima with their intervals), and the predictions at the budgets with
    their 95% intervals."""
    palette = Palette.of(runs)
    flops = flops_of(runs)
    budgets = list(fits.get("budgets") or [])
    fig, axes = panels(2, extra_width=3.2, sharex=True)
    ax_n, ax_d = axes[0]
    lo = float(flops[flops > 0].min()) / 2 if (flops > 0).any() else 1.0
    hi = max([float(flops.max()) * EXTRAPOLATE, *budgets]) if len(flops) else 10.0
    grid = np.geomspace(lo, hi, 60)
    handles, skipped = [], []
    for series in palette.series:
        color = palette.color(series)
        drawn = False
        for kind, name, style in APPROACHES:
            fit, reason = fit_entry(fits, kind, series)
            if not fit:
                skipped.append(f"{series}, {name}: {reason}")
                continue
            drawn = True
            g, a = value(fit["exponents"]["G"]), value(fit["exponents"]["a"])
            n_line = g * grid**a
            ax_n.plot(grid, n_line, color=color, linestyle=style)
            ax_d.plot(grid, grid / (6 * n_line), color=color, linestyle=style)
            for pred in fit.get("predictions", []):
                for ax, key in ((ax_n, "n_opt"), (ax_d, "d_opt")):
                    ax.errorbar(
                        pred["flops"],
                        value(pred[key]),
                        yerr=error_bar(pred[key]),
                        color=color,
                        marker="d",
                        markersize=5,
                        capsize=3,
                        linestyle="none",
                    )
        _observed_optima(ax_n, ax_d, fits, series, color)
        if drawn:
            handles.append(Line2D([], [], color=color, label=series))
    done = completed(runs)
    for ax, label, column in (
        (ax_n, "compute-optimal parameters N_opt", "n_params"),
        (ax_d, "compute-optimal tokens D_opt", "tokens"),
    ):
        log_axes(ax)
        # The trained runs' range and one decade past it: a law that leaves it is cut, not followed.
        ax.set(xlabel="training FLOPs C", ylabel=label, ylim=data_limits(runs.loc[done, column], EXTRAPOLATE))
    ax_n.set_title("N_opt = G · C^a")
    ax_d.set_title("D_opt = C / (6 N_opt)")
    handles += [Line2D([], [], color="grey", linestyle=style, label=name) for _, name, style in APPROACHES]
    handles += [
        Line2D(
            [],
            [],
            color="grey",
            marker="o",
            markerfacecolor="none",
            linestyle="none",
            label=f"{APPROACH_NAMES[APPROACH1]}: frontier run",
        ),
        Line2D(
            [],
            [],
            color="grey",
            marker="s",
            linestyle="none",
            label=f"{APPROACH_NAMES[APPROACH2]}: parabola minimum (95%)",
        ),
        Line2D([], [], color="grey", marker="d", linestyle="none", label="prediction at a budget (95%)"),
    ]
    handles += [Line2D([], [], linestyle="none", label=wrap(f"not fitted: {s}", 50)) for s in skipped]
    if not any(fit_entry(fits, kind, s)[0] for s in palette.series for kind, _, _ in APPROACHES):
        ax_n.text(0.5, 0.5, "no compute-optimal allocation was fitted", ha="center", transform=ax_n.transAxes)
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    return fig


def _observed_optima(ax_n, ax_d, fits: dict, series: str, color) -> None:
    first, _ = fit_entry(fits, APPROACH1, series)
    for p in (first or {}).get("points", []):
        ax_n.plot(p["flops"], p["n_params"], marker="o", markerfacecolor="none", color=color, linestyle="none")
        ax_d.plot(p["flops"], p["tokens"], marker="o", markerfacecolor="none", color=color, linestyle="none")
    # Approach 2's minima exist even when too few budgets had one for its power law.
    profiles = fits.get(APPROACH2, {}).get(series, {}).get("profiles", [])
    for p in profiles:
        if p["status"] != OK:
            continue
        n = p["n_opt"]
        ax_n.errorbar(p["flops"], value(n), yerr=error_bar(n), color=color, marker="s", markersize=4, capsize=2)
        d = {k: None if n.get(k) is None else p["flops"] / (6 * n[k]) for k in ("value", "lo", "hi")}
        d["lo"], d["hi"] = d["hi"], d["lo"]  # D = C / 6N falls as N rises
        ax_d.errorbar(p["flops"], value(d), yerr=error_bar(d), color=color, marker="s", markersize=4, capsize=2)
