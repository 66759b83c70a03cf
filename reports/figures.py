"""Figures of a sweep: each function takes the runs/curves tables (and the fits dict of
`tasks.fit.fit_runs`) and returns a matplotlib `Figure`; saving is the caller's job.

Figures are built without pyplot, so nothing global changes and PNGs render with Agg
whatever backend the caller has. Runs that did not complete are drawn as x markers on
the top edge of the axes (their loss is missing or meaningless), never dropped.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from reports.summary import fmt

LR_STYLES = ("-", "--", ":", "-.")
RATIO_MARKERS = ("o", "s", "^", "D", "v", "P")
SIZE_CMAP = matplotlib.colormaps["viridis"]
ARCH_COLORS = matplotlib.colormaps["tab10"].colors
PANEL = (5.0, 4.0)  # inches per panel
NOT_DONE = dict(marker="x", linestyle="none", markersize=7, markeredgewidth=1.5, clip_on=False)


def loss_curves(curves: pd.DataFrame) -> Figure:
    """Validation (bold, dotted with evals) and training (faint) loss vs tokens seen; one panel per arch,
    colour by parameter count, line style by peak learning rate. A run whose loss went non-finite ends in an x."""
    archs = sorted(curves["arch"].unique()) if len(curves) else []
    fig = Figure(figsize=(PANEL[0] * max(1, len(archs)) + 1.2, PANEL[1]), layout="constrained")
    axes = fig.subplots(1, max(1, len(archs)), squeeze=False, sharey=True)[0]
    if not archs:
        return _empty(fig, axes[0], "no loss curves")
    norm = _size_norm(curves["n_params"])
    lrs = sorted(curves["lr"].dropna().unique()) if "lr" in curves else []
    style = {lr: LR_STYLES[i % len(LR_STYLES)] for i, lr in enumerate(lrs)}
    for ax, arch in zip(axes, archs):
        for _, run in curves[curves["arch"] == arch].groupby("run_id", sort=True):
            run = run.sort_values("step")
            kw = dict(color=SIZE_CMAP(norm(run["n_params"].iloc[0])), linestyle=style.get(run["lr"].iloc[0], "-"))
            ax.plot(run["tokens_seen"], run["train_loss"], linewidth=0.8, alpha=0.35, **kw)
            val = run[np.isfinite(run["val_loss"])]
            ax.plot(val["tokens_seen"], val["val_loss"], linewidth=1.6, marker="o", markersize=2.5, **kw)
            finite = run[np.isfinite(run["train_loss"])]
            if len(finite) < len(run) and len(finite):
                ax.plot(finite["tokens_seen"].iloc[-1], finite["train_loss"].iloc[-1], color=kw["color"], **NOT_DONE)
        ax.set(xscale="log", yscale="log", title=arch, xlabel="tokens seen")
        ax.grid(True, which="both", alpha=0.2)
    _plain_log_ticks(axes[0].yaxis)
    axes[0].set_ylabel("loss")
    axes[0].set_ylim(*_loss_limits(pd.concat([curves["train_loss"], curves["val_loss"]])))
    fig.colorbar(ScalarMappable(norm=norm, cmap=SIZE_CMAP), ax=list(axes), label="parameters N")
    handles = [Line2D([], [], color="grey", linestyle=style[lr], label=f"lr {fmt(lr)}") for lr in lrs]
    handles += [Line2D([], [], color="grey", linewidth=1.6, marker="o", markersize=2.5, label="validation"),
                Line2D([], [], color="grey", linewidth=0.8, alpha=0.35, label="train")]
    axes[-1].legend(handles=handles, fontsize="small", loc="upper right")
    return fig


def loss_vs_flops(runs: pd.DataFrame, fits: dict) -> Figure:
    """Final val loss vs training FLOPs, log-log, all archs on one axes: frontier runs filled, others
    hollow, the fitted L = a C^-b with its 95% bootstrap band, unfinished runs as x on the top edge."""
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    flops = runs["flops"] if "flops" in runs else 6.0 * runs["n_params"] * runs["tokens"]
    done = _completed(runs)
    power = fits.get("power_law", {})
    for arch, color in _arch_colors(runs).items():
        mine = _arch(runs) == arch
        fit = power.get(arch, {"status": "skipped", "reason": "not in the fits"})
        on_front = _run_ids(runs).isin({p["run_id"] for p in fit.get("points", [])})
        ax.scatter(flops[mine & done & ~on_front], runs["val_loss"][mine & done & ~on_front],
                   facecolors="none", edgecolors=color, alpha=0.7)
        ax.scatter(flops[mine & on_front], runs["val_loss"][mine & on_front], color=color, zorder=3)
        if fit["status"] == "ok":
            a, b = fit["params"]["a"]["value"], fit["params"]["b"]["value"]
            grid = np.asarray(fit["band"]["flops"])
            ax.plot(grid, a * grid**-b, color=color, label=f"{arch}: L = {fmt(a)} · C^-{fmt(b)}")
            if fit["band"]["lo"] is not None:
                ax.fill_between(grid, fit["band"]["lo"], fit["band"]["hi"], color=color, alpha=0.15, linewidth=0)
        else:
            ax.scatter([], [], color=color, label=f"{arch}: not fitted")
        _on_top_edge(ax, flops[mine & ~done], color)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="final validation loss",
           title="Loss vs compute (filled: compute frontier; band: 95% bootstrap)")
    ax.grid(True, which="both", alpha=0.2)
    _plain_log_ticks(ax.yaxis)
    handles, _ = ax.get_legend_handles_labels()
    if (~done).any():
        handles.append(Line2D([], [], color="grey", **NOT_DONE, label=f"{_not_done_label(runs, done)} (no final loss)"))
    ax.legend(handles=handles, fontsize="small")
    return fig


def loss_vs_lr(runs: pd.DataFrame) -> Figure:
    """Final val loss vs peak learning rate, one panel per arch: colour by size, marker by tokens per
    parameter, one line per (size, tokens) through the seed-mean losses."""
    archs = list(_arch_colors(runs))
    fig = Figure(figsize=(PANEL[0] * max(1, len(archs)) + 1.8, PANEL[1]), layout="constrained")
    axes = fig.subplots(1, max(1, len(archs)), squeeze=False, sharey=True)[0]
    if not archs or "lr" not in runs:
        return _empty(fig, axes[0], "no learning rates in the runs table")
    norm = _size_norm(runs["n_params"])
    ratio = (runs["tokens"] / runs["n_params"]).round(1)
    marker = {r: RATIO_MARKERS[i % len(RATIO_MARKERS)] for i, r in enumerate(sorted(ratio.unique()))}
    done = _completed(runs)
    for ax, arch in zip(axes, archs):
        mine = runs[_arch(runs) == arch]
        for (n_params, _), line in mine.groupby(["n_params", "tokens"], sort=True):
            style = dict(color=SIZE_CMAP(norm(n_params)), marker=marker[ratio[line.index[0]]])
            mean = line[done[line.index]].groupby("lr")["val_loss"].mean()
            ax.plot(mean.index, mean.values, **style)
            _on_top_edge(ax, line.loc[~done[line.index], "lr"], style["color"])
        ax.set(xscale="log", title=arch, xlabel="peak learning rate")
        ax.grid(True, which="both", alpha=0.2)
    axes[0].set_ylabel("final validation loss")
    sizes = runs.drop_duplicates("n_params").sort_values("n_params")
    handles = [Line2D([], [], color=SIZE_CMAP(norm(r.n_params)),
                      label=f"{r.size} ({fmt(r.n_params)})" if "size" in runs else fmt(r.n_params))
               for r in sizes.itertuples()]
    handles += [Line2D([], [], color="grey", linestyle="none", marker=m, label=f"{fmt(r)} tokens/param")
                for r, m in marker.items()]
    if (~done).any():
        handles.append(Line2D([], [], color="grey", **NOT_DONE, label=_not_done_label(runs, done)))
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    return fig


def parametric_fit(runs: pd.DataFrame, fits: dict) -> Figure:
    """Observed vs predicted final loss under each arch's L(N, D) fit, one point per (N, D)."""
    fig = Figure(figsize=(6.0, 5.5), layout="constrained")
    ax = fig.add_subplot()
    parametric = fits.get("parametric", {})
    colors = _arch_colors(runs)
    shown = []
    for arch, fit in parametric.items():
        color = colors.get(arch, "grey")
        if fit["status"] != "ok":
            ax.scatter([], [], color=color, marker="s", label=f"{arch}: not fitted ({fit['reason']})")
            continue
        p = fit["params"]
        observed = [pt["val_loss"] for pt in fit["points"]]
        predicted = [pt["predicted"] for pt in fit["points"]]
        shown += observed + predicted
        ax.scatter(predicted, observed, color=color, label=(
            f"{arch}: E = {fmt(p['E']['value'])}, α = {fmt(p['alpha']['value'])}, β = {fmt(p['beta']['value'])}"
            + ("" if fit["convergence"]["converged"] else " (not converged)")))
    if shown:
        lo, hi = min(shown), max(shown)
        pad = 0.05 * (hi - lo or hi)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", linewidth=0.8, linestyle="--", label="y = x")
    else:
        ax.text(0.5, 0.5, "no architecture has an L(N, D) fit", ha="center", va="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
    ax.set(xlabel="predicted loss E + A/N^α + B/D^β", ylabel="observed final validation loss",
           title="L(N, D) fit (Chinchilla approach 3)")
    ax.grid(True, alpha=0.2)
    done = _completed(runs)
    if (~done).any():
        ax.plot([], [], linestyle="none", label=f"not in the fit: {_not_done_label(runs, done)}")
    if parametric:
        ax.legend(fontsize="small", loc="upper left")
    return fig


def _arch(runs: pd.DataFrame) -> pd.Series:
    return runs["arch"].astype(str) if "arch" in runs else pd.Series("all", index=runs.index)


def _run_ids(runs: pd.DataFrame) -> pd.Series:
    # tasks.fit names runs by row number when the table has no run_id.
    return runs["run_id"].astype(str) if "run_id" in runs else pd.Series(np.arange(len(runs)).astype(str), index=runs.index)


def _arch_colors(runs: pd.DataFrame) -> dict:
    return {arch: ARCH_COLORS[i % len(ARCH_COLORS)] for i, arch in enumerate(sorted(_arch(runs).unique()))}


def _completed(runs: pd.DataFrame) -> pd.Series:
    status = runs["status"] if "status" in runs else pd.Series("completed", index=runs.index)
    return (status == "completed") & np.isfinite(runs["val_loss"].astype(float))


def _not_done_label(runs: pd.DataFrame, done: pd.Series) -> str:
    status = runs["status"] if "status" in runs else pd.Series("completed", index=runs.index)
    counts = status[~done].where(status[~done] != "completed", "no final loss").value_counts().sort_index()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _on_top_edge(ax, x, color) -> None:
    if len(x):
        ax.plot(x, np.ones(len(x)), color=color, transform=ax.get_xaxis_transform(), **NOT_DONE)


def _plain_log_ticks(axis) -> None:
    """Label a log axis of losses 3, 4, 6 rather than 3x10^0; minor ticks too when it spans under two decades."""
    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _size_norm(n_params: pd.Series) -> LogNorm:
    lo, hi = float(n_params.min()), float(n_params.max())
    return LogNorm(lo / 1.5, hi * 1.5) if lo == hi else LogNorm(lo, hi)


def _loss_limits(losses: pd.Series) -> tuple[float, float]:
    """Bounds that show every healthy curve but not a diverged one's explosion."""
    finite = losses[np.isfinite(losses) & (losses > 0)]
    if finite.empty:
        return 1.0, 10.0
    return finite.min() * 0.95, min(finite.max(), np.percentile(finite, 99)) * 1.05


def _empty(fig: Figure, ax, text: str) -> Figure:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig
