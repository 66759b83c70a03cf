"""Figures of a report: each function takes the runs and curves tables and the fits dict of
`tasks.fit.fit_runs` (`tasks.fit.entries.Fits`, keyed by series, see `style`) and returns a
matplotlib `Figure`; saving is the caller's job.

Figures are built without pyplot, so nothing global changes and PNGs render with Agg whatever
backend the caller has. Runs that did not complete are drawn as x markers on the top edge of the
axes (their loss is missing or meaningless), never dropped. A fit that was skipped leaves its
reason where its curve would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pandas as pd
from matplotlib.figure import Figure

from reports.figures.checks import held_out, residuals
from reports.figures.compute import allocation, loss_vs_flops
from reports.figures.curves import loss_curves, loss_vs_lr
from reports.figures.laws import isoflop_profiles, loss_contours


class FigureSpec(NamedTuple):
    stem: str  # file name, figures/<stem>.png
    caption: str
    draw: Callable[[pd.DataFrame, pd.DataFrame, dict], Figure]  # (runs, curves, fits)


FIGURES = (
    FigureSpec(
        "loss_vs_flops",
        "Final validation loss and perplexity vs training compute: the loss-vs-compute law "
        "L = a·C^-b per architecture (filled points: the compute frontier it was fitted to) with its 95% "
        "bootstrap band, extrapolated one decade (dashed).",
        lambda runs, curves, fits: loss_vs_flops(runs, fits),
    ),
    FigureSpec(
        "isoflop",
        "IsoFLOP profiles (Chinchilla approach 2): loss vs parameters at each compute budget, "
        "the fitted parabola in log N and its minimum with the 95% interval of N_opt.",
        lambda runs, curves, fits: isoflop_profiles(runs, fits),
    ),
    FigureSpec(
        "loss_contours",
        "The fitted L(N, D) = E + A/N^α + B/D^β (Chinchilla approach 3) as iso-loss contours, "
        "with the compute-optimal line and the fitted runs coloured by their observed loss.",
        lambda runs, curves, fits: loss_contours(runs, fits),
    ),
    FigureSpec(
        "allocation",
        "Compute-optimal parameters N_opt and tokens D_opt vs compute by the three approaches, "
        "with the points each went through and 95% intervals at the budgets.",
        lambda runs, curves, fits: allocation(runs, fits),
    ),
    FigureSpec(
        "loss_vs_lr",
        "Final validation loss vs peak learning rate per (N, D), coloured by size, with the "
        "fitted optimum (star, 95% interval).",
        lambda runs, curves, fits: loss_vs_lr(runs, fits),
    ),
    FigureSpec(
        "loss_curves",
        "Training (top) and validation (bottom) loss vs tokens seen, coloured by size.",
        lambda runs, curves, fits: loss_curves(runs, curves),
    ),
    FigureSpec(
        "residuals",
        "Residuals of every fit: observed / fitted − 1 at each point it went through.",
        lambda runs, curves, fits: residuals(runs, fits),
    ),
    FigureSpec(
        "held_out",
        "Held-out check: the laws refitted without the largest compute scale, predicting it "
        "(95% intervals), beside L(N, D)'s in-sample points.",
        lambda runs, curves, fits: held_out(runs, fits),
    ),
)

__all__ = ["FIGURES", "FigureSpec"]
