"""How far to trust the laws: the residuals of every fit, and the held-out check (the laws refitted
without the largest compute scale predict it, as the OLMo ladder and Llama 3 do)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from reports.figures.style import Palette, error_bar, fit_entry, log_axes, panels, value, wrap
from reports.names import APPROACH_NAMES, LOSS_VS_COMPUTE_NAME, PARAMETRIC_NAME
from reports.numbers import fmt, fmt_interval
from tasks.fit.entries import (
    APPROACH1,
    APPROACH2,
    HELD_OUT,
    LAW,
    LEARNING_RATE,
    LOSS_VS_COMPUTE,
    OK,
    PARAMETRIC,
    Approach1,
    Approach2,
    HeldOut,
    Interval,
    LearningRate,
    LossVsCompute,
    Parametric,
)


def _loss_vs_compute(fit: LossVsCompute) -> list[tuple[float, float]]:
    a, b = value(fit["params"]["a"]), value(fit["params"]["b"])
    return [(p["flops"], p["val_loss"] / (a * p["flops"] ** -b)) for p in fit["points"]]


def _parametric(fit: Parametric) -> list[tuple[float, float]]:
    return [(6 * p["n_params"] * p["tokens"], p["val_loss"] / p["predicted"]) for p in fit["points"]]


def _approach1(fit: Approach1) -> list[tuple[float, float]]:
    g, a = value(fit["exponents"]["G"]), value(fit["exponents"]["a"])
    return [(p["flops"], p["n_params"] / (g * p["flops"] ** a)) for p in fit["points"]]


def _approach2(fit: Approach2) -> list[tuple[float, float]]:
    g, a = value(fit["exponents"]["G"]), value(fit["exponents"]["a"])
    return [(p["flops"], value(p["n_opt"]) / (g * p["flops"] ** a)) for p in fit["profiles"] if p["status"] == OK]


def _learning_rate(fit: LearningRate) -> list[tuple[float, float]]:
    law = fit.get(LAW) or {}
    if law.get("status") != OK:
        return []
    k, p = value(law["k"]), value(law["p"])
    return [(q["n_params"], value(q["lr_opt"]) / (k * q["n_params"] ** -p)) for q in fit["points"] if q["status"] == OK]


# (fits key, panel title, x label, what observed / fitted compares)
RESIDUALS = (
    (LOSS_VS_COMPUTE, f"{LOSS_VS_COMPUTE_NAME}: L = a C^-b", "training FLOPs C", _loss_vs_compute),
    (PARAMETRIC, f"{PARAMETRIC_NAME} = E + A/N^α + B/D^β", "C = 6ND", _parametric),
    (APPROACH1, f"{APPROACH_NAMES[APPROACH1]}: N_opt of frontier runs", "training FLOPs C", _approach1),
    (APPROACH2, f"{APPROACH_NAMES[APPROACH2]}: N_opt of parabola minima", "training FLOPs C", _approach2),
    (LEARNING_RATE, "lr_opt = k N^-p", "parameters N", _learning_rate),
)


def residuals(runs: pd.DataFrame, fits: dict) -> Figure:
    """Observed / fitted − 1 (percent) for every point each fit went through, one panel per fit,
    coloured by series. A pattern over the x axis (rather than scatter about zero) means the law's
    form does not match the data."""
    palette = Palette.of(runs)
    fig, grid = panels(3, rows=2)
    skipped = []
    for ax, (kind, title, xlabel, ratios) in zip(grid.ravel(), RESIDUALS):
        for series in palette.series:
            fit, reason = fit_entry(fits, kind, series)
            points = ratios(fit) if fit else []
            if not points:
                skipped.append(f"{title} — {series}: {reason or 'no points'}")
                continue
            x, ratio = np.array(points).T
            ax.plot(x, 100 * (ratio - 1), color=palette.color(series), marker=palette.marker(series), linestyle="none")
        ax.axhline(0, color="black", linewidth=0.8)
        log_axes(ax, y=False)
        ax.set(title=title, xlabel=xlabel, ylabel="observed / fitted − 1 (%)")
    legend_ax = grid[1, 2]
    legend_ax.set_axis_off()
    handles = [
        Line2D([], [], color=palette.color(s), marker=palette.marker(s), linestyle="none", label=s)
        for s in palette.series
    ]
    handles += [Line2D([], [], linestyle="none", label=wrap(f"not fitted: {s}", 60)) for s in skipped]
    legend_ax.legend(handles=handles, loc="upper left", fontsize="x-small", frameon=False)
    return fig


def held_out(runs: pd.DataFrame, fits: dict) -> Figure:
    """Left: observed against predicted final loss; L(N, D)'s in-sample points hollow, its predictions
    of the held-out largest compute scale filled with their 95% intervals, the loss-vs-compute law's
    prediction of the best held-out run as a diamond. Right: the held-out relative errors by size."""
    palette = Palette.of(runs)
    fig, axes = panels(2, extra_width=3.0)
    ax, ax_err = axes[0]
    shown, handles = [], []
    for series in palette.series:
        color, marker = palette.color(series), palette.marker(series)
        fit, _ = fit_entry(fits, PARAMETRIC, series)
        for p in (fit or {}).get("points", []):
            ax.plot(p["predicted"], p["val_loss"], color=color, marker=marker, markerfacecolor="none", alpha=0.5)
            shown += [p["predicted"], p["val_loss"]]
        held, reason = fit_entry(fits, HELD_OUT, series)
        if not held:
            handles.append(Line2D([], [], linestyle="none", label=wrap(f"{series}: no held-out check ({reason})", 50)))
            continue
        notes = _draw_held_out(ax, ax_err, held, color, marker, shown)
        label = f"{series}, held out {fmt(held['flops'])} FLOPs: " + "; ".join(notes)
        handles.append(Line2D([], [], color=color, marker=marker, label=wrap(label, 50)))
    if shown:
        lo, hi = min(shown), max(shown)
        pad = 0.05 * (hi - lo or hi)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", linewidth=0.8, linestyle="--")
    ax.set(
        xlabel="predicted final loss",
        ylabel="observed final validation loss",
        title="Predicted vs observed (filled: held out)",
    )
    ax.grid(True, alpha=0.2)
    ax_err.axhline(0, color="black", linewidth=0.8)
    log_axes(ax_err, y=False)
    ax_err.set(
        xlabel="parameters N",
        ylabel="predicted / observed − 1 (%)",
        title=f"{PARAMETRIC_NAME} error at the held-out scale",
    )
    handles += [
        Line2D(
            [],
            [],
            color="grey",
            marker="o",
            markerfacecolor="none",
            linestyle="none",
            label=f"{PARAMETRIC_NAME}, in sample",
        ),
        Line2D([], [], color="grey", marker="o", linestyle="none", label=f"{PARAMETRIC_NAME}, held out (95%)"),
        Line2D(
            [],
            [],
            color="grey",
            marker="d",
            markeredgecolor="black",
            linestyle="none",
            label=f"{LOSS_VS_COMPUTE_NAME}, best held-out run",
        ),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    return fig


def _draw_held_out(ax, ax_err, held: HeldOut, color, marker: str, shown: list[float]) -> list[str]:
    """One series' held-out predictions on both panels (their values added to `shown`); the legend's notes."""
    notes = []
    par, law = held[PARAMETRIC], held[LOSS_VS_COMPUTE]
    if par["status"] == OK:
        for p in par["points"]:
            pred = p["predicted"]
            ax.errorbar(value(pred), p["observed"], xerr=error_bar(pred), color=color, marker=marker, capsize=3)
            ax_err.errorbar(
                p["n_params"],
                100 * value(p["relative_error"]),
                yerr=_pct(p["relative_error"]),
                color=color,
                marker=marker,
                capsize=3,
                linestyle="none",
            )
            shown += [value(pred), p["observed"]]
        notes.append(f"{PARAMETRIC_NAME} mean |error| {_percent(par['mean_abs_relative_error'])}")
    else:
        notes.append(f"{PARAMETRIC_NAME}: {par['reason']}")
    if law["status"] == OK:
        ax.errorbar(
            value(law["predicted"]),
            law["observed"],
            xerr=error_bar(law["predicted"]),
            color=color,
            marker="d",
            markersize=9,
            markeredgecolor="black",
            capsize=3,
        )
        shown += [value(law["predicted"]), law["observed"]]
        notes.append(f"{LOSS_VS_COMPUTE_NAME} error {_percent(law['relative_error'])}")
    else:
        notes.append(f"{LOSS_VS_COMPUTE_NAME}: {law['reason']}")
    return notes


def _pct(iv: Interval):
    bar = error_bar(iv)
    return None if bar is None else [[100 * bar[0][0]], [100 * bar[1][0]]]


def _percent(iv: Interval) -> str:
    scaled = {k: None if iv.get(k) is None else 100 * iv[k] for k in ("value", "lo", "hi")}
    return fmt_interval(scaled, 2) + "%"
