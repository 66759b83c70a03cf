"""The words at the top of a report: what ran, which architecture wins at which compute, the fitted
exponents and the tokens per parameter at the optimum. Built from the runs table and the fits dict
(`tasks.fit.fit_runs`, or several merged by `reports.combine`, keyed by series)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.names import LOSS_VS_COMPUTE_NAME, PARAMETRIC_NAME
from reports.numbers import fmt, fmt_interval
from reports.tables import markdown_table, multiplier_blocks, runs_table
from tasks.fit.entries import LOSS_VS_COMPUTE, OK, PARAMETRIC, LossVsCompute
from tasks.status import COMPLETED, DIVERGED, FAILED

STATUSES = (COMPLETED, DIVERGED, FAILED)


def status_counts(runs: pd.DataFrame) -> dict[str, int]:
    """Runs per status: the three final ones always, any other (pending) when present."""
    counts = runs["status"].value_counts() if "status" in runs else pd.Series({COMPLETED: len(runs)})
    others = sorted(set(counts.index) - set(STATUSES))
    return {s: int(counts.get(s, 0)) for s in (*STATUSES, *others)}


def summary_lines(runs: pd.DataFrame, fits: dict) -> list[str]:
    """The report's opening, one sentence (Markdown) per line."""
    counts = status_counts(runs)
    first = f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    if "sweep" in runs and runs["sweep"].nunique() > 1:
        first += " (" + ", ".join(f"{s}: {n}" for s, n in runs["sweep"].value_counts(sort=False).items()) + ")"
    lines = [first + "."]
    lines += _best_run(runs)
    if not fits.get(LOSS_VS_COMPUTE) and not fits.get(PARAMETRIC):
        lines.append("No scaling laws were fitted.")
    lines += winner_lines(fits)
    for arch, fit in fits.get(LOSS_VS_COMPUTE, {}).items():
        if fit["status"] != OK:
            lines.append(f"**{arch}**, {LOSS_VS_COMPUTE_NAME}: not fitted ({fit['reason']}).")
            continue
        lines.append(
            f"**{arch}**, {LOSS_VS_COMPUTE_NAME}: L ∝ C^-b with b = {fmt_interval(fit['params']['b'])} "
            f"over {len(fit['points'])} frontier runs (R² {fmt(fit['r2'])})."
        )
    for arch, fit in fits.get(PARAMETRIC, {}).items():
        if fit["status"] != OK:
            lines.append(f"**{arch}**, {PARAMETRIC_NAME}: not fitted ({fit['reason']}).")
            continue
        p = fit["params"]
        line = (
            f"**{arch}**, {PARAMETRIC_NAME} = E + A/N^α + B/D^β: α = {fmt_interval(p['alpha'])}, "
            f"β = {fmt_interval(p['beta'])}, E = {fmt_interval(p['E'])}"
        )
        if fit["predictions"]:
            first = fit["predictions"][0]
            line += (
                f"; at {fmt(first['flops'])} FLOPs the optimum is "
                f"N = {fmt(first['n_opt']['value'])}, D = {fmt(first['d_opt']['value'])} "
                f"({fmt(first['tokens_per_param']['value'])} tokens per parameter)"
            )
        if not fit["bootstrap"]["ok"]:
            line += "; no interval: too few distinct points to resample"
        lines.append(line + ".")
        conv = fit["convergence"]
        if not conv["converged"]:
            bound = f", {', '.join(conv['on_bound'])} on a bound" if conv["on_bound"] else ""
            lines.append(
                f"⚠ The {arch} {PARAMETRIC_NAME} fit did not converge cleanly ({conv['message']}{bound}): "
                "read it with care."
            )
    if fits.get("excluded"):
        lines.append(f"{len(fits['excluded'])} run(s) left out of the fits (listed below).")
    lines.extend(fits.get("notes", []))
    return lines


def winner_lines(fits: dict) -> list[str]:
    """Which series the loss-vs-compute laws put lowest: at the largest compute every fitted series ran
    (no extrapolation), and at the largest budget; then the compute multipliers measured, not extrapolated."""
    laws = {s: f for s, f in fits.get(LOSS_VS_COMPUTE, {}).items() if f["status"] == OK}
    if len(laws) < 2:
        return []
    lines = []
    common = min(max(p["flops"] for p in f["points"]) for f in laws.values())
    ranked = sorted(((s, _law_at(f, common)) for s, f in laws.items()), key=lambda x: x[1]["value"])
    lines.append(_ranking(f"At {fmt(common)} FLOPs, the largest compute every architecture ran", ranked))
    budgets = fits.get("budgets") or []
    if budgets:
        top = max(budgets)
        at_top = [(s, p["loss"]) for s, f in laws.items() for p in f.get("predictions", []) if p["flops"] == top]
        if len(at_top) == len(laws):
            lines.append(_ranking(f"At {fmt(top)} FLOPs (extrapolated)", sorted(at_top, key=lambda x: x[1]["value"])))
    for block in multiplier_blocks(fits):
        for arch, entry in block["archs"].items():
            measured = [a for a in entry.get("at", []) if not a["extrapolated"]]
            if entry["status"] == OK and measured:
                m = measured[0]
                lines.append(
                    f"**{arch}** reaches the loss {block['reference']} reaches with {fmt(m['flops'])} FLOPs "
                    f"(L = {fmt(m['loss'], 4)}) with {fmt_interval(m['multiplier'])} times less compute "
                    f"(above 1: {arch} is cheaper)."
                )
    return lines


def _law_at(fit: LossVsCompute, flops: float) -> dict:
    """The law's loss at `flops`, with the 95% band there when the band covers it."""
    a, b = fit["params"]["a"]["value"], fit["params"]["b"]["value"]
    out = {"value": a * flops**-b, "lo": None, "hi": None}
    band = fit.get("band") or {}
    if band.get("lo") is not None:
        grid = np.log(np.asarray(band["flops"], float))
        if grid[0] <= np.log(flops) <= grid[-1]:
            for k in ("lo", "hi"):
                out[k] = float(np.exp(np.interp(np.log(flops), grid, np.log(np.asarray(band[k], float)))))
    return out


def _ranking(where: str, ranked: list[tuple[str, dict]]) -> str:
    (best, low), rest = ranked[0], ranked[1:]
    text = f"{where}: **{best}** has the lowest loss ({fmt_interval(low, 4)}), then " + ", ".join(
        f"{s} ({fmt_interval(iv, 4)})" for s, iv in rest
    )
    second = rest[0][1]
    if low.get("hi") is not None and second.get("lo") is not None and low["hi"] >= second["lo"]:
        text += f"; the 95% intervals of {best} and {rest[0][0]} overlap, so their order is not resolved"
    return text + "."


def _best_run(runs: pd.DataFrame) -> list[str]:
    done = runs[(runs.get("status", COMPLETED) == COMPLETED) & np.isfinite(runs["val_loss"].astype(float))]
    if done.empty:
        return []
    best = done.loc[done["val_loss"].idxmin()]
    name = best.get("name") if isinstance(best.get("name"), str) else best.get("run_id")
    arch = f"{best['series' if 'series' in best else 'arch']}, " if "arch" in best else ""
    size = f"N = {fmt(best['n_params'])}, D = {fmt(best['tokens'])}"
    return [f"Lowest final validation loss: {fmt(best['val_loss'], 4)} by {name} ({arch}{size})."]


def summary_markdown(runs: pd.DataFrame, fits: dict) -> str:
    """The summary sentences and the runs table in Markdown, e.g. for a Prefect artifact."""
    bullets = "\n".join(f"- {line}" for line in summary_lines(runs, fits))
    return bullets + "\n\n" + markdown_table(runs_table(runs)) + "\n"
