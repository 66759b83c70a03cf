"""The fitted laws in (N, D): IsoFLOP profiles with their parabolas (Chinchilla approach 2), and
L(N, D) as iso-loss contours with the compute-optimal line (approach 3)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from reports.figures.compute import EXTRAPOLATE
from reports.figures.style import (
    BUDGET_CMAP,
    Palette,
    completed,
    data_limits,
    error_bar,
    fit_entry,
    flops_of,
    footnote,
    log_axes,
    message,
    panels,
    plain_log_ticks,
    series_of,
    value,
    wrap,
)
from reports.names import PARAMETRIC_NAME
from reports.numbers import fmt
from tasks.fit.entries import APPROACH2, OK, PARAMETRIC

LOSS_CMAP = "viridis_r"
CONTOURS = 12


def isoflop_profiles(runs: pd.DataFrame, fits: dict) -> Figure:
    """Final loss against N at each compute budget (colour by budget), one panel per series: the
    parabola in log N that tasks.fit.isoflop fitted, and its minimum with the 95% interval of N_opt.
    Budgets the fit dropped (too few sizes, no bracketed minimum) are hollow points, and say why."""
    palette = Palette.of(runs)
    labels = series_of(runs)
    fig, axes = panels(len(palette.series), extra_width=1.4, sharey=True)
    axes = axes[0]
    all_flops = [p["flops"] for s in palette.series for p in fits.get(APPROACH2, {}).get(s, {}).get("profiles", [])]
    norm = LogNorm(min(all_flops) / 1.5, max(all_flops) * 1.5) if all_flops else LogNorm(1, 10)
    for ax, series in zip(axes, palette.series):
        entry = fits.get(APPROACH2, {}).get(series) or {}
        profiles = entry.get("profiles", [])
        ax.set_title(series)
        if not profiles:
            message(ax, f"no IsoFLOP profiles: {entry.get('reason', 'not in the fits')}")
            continue
        mine = runs[labels == series]
        dropped = []
        for profile in profiles:
            points = (
                mine[mine["run_id"].astype(str).isin(map(str, profile["run_ids"])) & completed(mine)]
                .groupby("n_params")["val_loss"]
                .mean()
            )
            color = BUDGET_CMAP(norm(profile["flops"]))
            if profile["status"] != OK:
                ax.plot(points.index, points.values, color=color, marker="o", markerfacecolor="none", linestyle=":")
                dropped.append(f"{fmt(profile['flops'])} FLOPs: {profile['reason']}")
                continue
            ax.plot(points.index, points.values, color=color, marker="o", linestyle="none")
            # The display parabola: the same least squares in log N that tasks.fit.isoflop solved.
            coef = np.polyfit(np.log(points.index.to_numpy(float)), points.to_numpy(float), 2)
            grid = np.geomspace(points.index.min() / 1.3, points.index.max() * 1.3, 60)
            ax.plot(grid, np.polyval(coef, np.log(grid)), color=color, linewidth=1.2)
            ax.errorbar(
                value(profile["n_opt"]),
                value(profile["loss_min"]),
                xerr=error_bar(profile["n_opt"]),
                color=color,
                marker="*",
                markersize=12,
                markeredgecolor="black",
                capsize=2,
                zorder=4,
            )
        if entry.get("status") != OK:
            dropped.insert(0, f"no power law of the minima: {entry['reason']}")
        log_axes(ax)
        ax.set_xlabel("parameters N")
        footnote(ax, dropped)
    axes[0].set_ylabel("final validation loss (best lr)")
    plain_log_ticks(axes[0].yaxis)
    fig.colorbar(ScalarMappable(norm=norm, cmap=BUDGET_CMAP), ax=list(axes), label="compute budget C (FLOPs)")
    handles = [
        Line2D(
            [],
            [],
            color="grey",
            marker="*",
            markersize=11,
            markeredgecolor="black",
            linestyle="none",
            label="minimum, N_opt (95%)",
        ),
        Line2D([], [], color="grey", marker="o", markerfacecolor="none", linestyle=":", label="budget dropped"),
    ]
    axes[-1].legend(handles=handles, fontsize="small", loc="upper right")
    return fig


def loss_contours(runs: pd.DataFrame, fits: dict) -> Figure:
    """The fitted L(N, D) = E + A/N^α + B/D^β as iso-loss contours over (N, D), one panel per series,
    with the compute-optimal line N_opt(C), D_opt(C) (to one decade past the largest run), lines of
    equal compute C = 6ND, and the fitted (N, D) points coloured by their observed loss on the
    contours' scale: a point whose colour differs from the contour under it is a misfit."""
    palette = Palette.of(runs)
    labels = series_of(runs)
    fig, axes = panels(len(palette.series), extra_width=1.4)
    axes = axes[0]
    done = completed(runs)
    finite = runs.loc[done, "val_loss"]
    norm = LogNorm(finite.min(), finite.max()) if len(finite) else LogNorm(1, 10)
    for ax, series in zip(axes, palette.series):
        mine = runs[(labels == series) & done]
        ax.set_title(series)
        fit, reason = fit_entry(fits, PARAMETRIC, series)
        if not fit:
            ax.scatter(mine["n_params"], mine["tokens"], color="grey", s=12)
            ax.text(
                0.5,
                0.5,
                wrap(f"{PARAMETRIC_NAME} not fitted: {reason}", 40),
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize="small",
                color="#555555",
            )
            log_axes(ax)
            ax.set(xlabel="parameters N", ylabel="tokens D")
            continue
        p = {k: value(v) for k, v in fit["params"].items()}
        g, a = value(fit["exponents"]["G"]), value(fit["exponents"]["a"])
        flops = flops_of(mine)
        c_line = np.geomspace(flops.min() / 2, flops.max() * EXTRAPOLATE, 50)
        n_line = g * c_line**a
        d_line = c_line / (6 * n_line)
        pts_n = np.array([q["n_params"] for q in fit["points"]])
        pts_d = np.array([q["tokens"] for q in fit["points"]])
        # The runs' range and the one decade past it, wherever the compute-optimal line would lead.
        n_grid = np.geomspace(*data_limits(pts_n, EXTRAPOLATE), 120)
        d_grid = np.geomspace(*data_limits(pts_d, EXTRAPOLATE), 120)
        nn, dd = np.meshgrid(n_grid, d_grid)
        loss = p["E"] + p["A"] / nn ** p["alpha"] + p["B"] / dd ** p["beta"]
        levels = np.geomspace(max(loss.min(), p["E"] * 1.001), np.percentile(loss, 90), CONTOURS)
        lines = ax.contour(nn, dd, loss, levels=levels, cmap=LOSS_CMAP, norm=norm, linewidths=1.0)
        ax.clabel(lines, fmt=lambda v: fmt(v), fontsize="x-small")
        for c in 10.0 ** np.arange(
            np.floor(np.log10(nn.min() * dd.min() * 6)), np.ceil(np.log10(nn.max() * dd.max() * 6))
        ):
            ax.plot(n_grid, c / (6 * n_grid), color="grey", linewidth=0.6, linestyle=":")
        ax.plot(n_line, d_line, color="black", linewidth=1.8)
        ax.scatter(
            pts_n,
            pts_d,
            c=[q["val_loss"] for q in fit["points"]],
            cmap=LOSS_CMAP,
            norm=norm,
            edgecolors="black",
            s=30,
            zorder=3,
        )
        ax.set(xlim=(n_grid[0], n_grid[-1]), ylim=(d_grid[0], d_grid[-1]))
        log_axes(ax)
        ax.set(xlabel="parameters N", ylabel="tokens D")
        if not fit["convergence"]["converged"]:  # on no bound (fit_entry keeps those off), but stopped early
            footnote(ax, [f"⚠ {PARAMETRIC_NAME} fit: {fit['convergence']['state']}; read it with care"])
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=LOSS_CMAP), ax=list(axes), label="loss (contours and runs)")
    plain_log_ticks(bar.ax.yaxis)
    handles = [
        Line2D([], [], color="black", linewidth=1.8, label="compute-optimal N_opt(C), D_opt(C)"),
        Line2D([], [], color="grey", linewidth=0.6, linestyle=":", label="equal compute C = 6ND (decades)"),
        Line2D([], [], color="grey", marker="o", markeredgecolor="black", linestyle="none", label="fitted runs"),
    ]
    axes[-1].legend(handles=handles, fontsize="small", loc="upper right")
    return fig
