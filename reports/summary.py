"""The words and tables of a sweep report, built from the runs table and the fits dict.

Every table is a `Table` of formatted strings, so the HTML and Markdown reports (and the
Prefect artifact, `summary_markdown`) show the same numbers. The fits dict is the output
of `tasks.fit.fit_runs` (layout in that module's docstring).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

STATUSES = ("completed", "diverged", "failed")
MISSING = "–"


class Table(NamedTuple):
    title: str
    columns: list[str]
    rows: list[list[str]]


def fmt(x, digits: int = 3) -> str:
    """`digits` significant figures; scientific outside [0.01, 10^4) as 1.23e19 (no '+', no padding)."""
    if isinstance(x, str):
        return x
    if x is None or pd.isna(x) or not math.isfinite(x):
        return MISSING
    x = float(x)
    if x == 0 or 1e-2 <= abs(x) < 1e4:
        return np.format_float_positional(x, precision=digits, unique=False, fractional=False, trim="-")
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def fmt_interval(iv: dict | None, digits: int = 3) -> str:
    """'value [lo, hi]' from a fits interval, or the value alone when there was no bootstrap."""
    if not iv:
        return MISSING
    if iv.get("lo") is None or iv.get("hi") is None:
        return fmt(iv.get("value"), digits)
    return f"{fmt(iv['value'], digits)} [{fmt(iv['lo'], digits)}, {fmt(iv['hi'], digits)}]"


def status_counts(runs: pd.DataFrame) -> dict[str, int]:
    """Runs per status: the three final ones always, any other (pending) when present."""
    counts = runs["status"].value_counts() if "status" in runs else pd.Series({"completed": len(runs)})
    others = sorted(set(counts.index) - set(STATUSES))
    return {s: int(counts.get(s, 0)) for s in (*STATUSES, *others)}


def summary_lines(runs: pd.DataFrame, fits: dict) -> list[str]:
    """The report's opening, one sentence (Markdown) per line."""
    counts = status_counts(runs)
    lines = [f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "."]
    budgets = fits.get("budgets") or []
    if not fits.get("power_law") and not fits.get("parametric"):
        lines.append("No scaling laws were fitted.")
    for arch, fit in fits.get("power_law", {}).items():
        if fit["status"] != "ok":
            lines.append(f"**{arch}**, loss vs compute: not fitted ({fit['reason']}).")
            continue
        lines.append(
            f"**{arch}**, loss vs compute: L ∝ C^-b with b = {fmt_interval(fit['params']['b'])} "
            f"over {len(fit['points'])} frontier runs (R² {fmt(fit['r2'])})."
        )
    for arch, fit in fits.get("parametric", {}).items():
        if fit["status"] != "ok":
            lines.append(f"**{arch}**, L(N, D): not fitted ({fit['reason']}).")
            continue
        p = fit["params"]
        line = (
            f"**{arch}**, L(N, D) = E + A/N^α + B/D^β: α = {fmt_interval(p['alpha'])}, "
            f"β = {fmt_interval(p['beta'])}, E = {fmt_interval(p['E'])}"
        )
        if fit["predictions"]:
            first = fit["predictions"][0]
            line += (
                f"; at {fmt(budgets[0])} FLOPs the optimum is N = {fmt(first['n_opt']['value'])}, "
                f"D = {fmt(first['d_opt']['value'])} ({fmt(first['tokens_per_param']['value'])} tokens per parameter)"
            )
        if not fit["bootstrap"]["ok"]:
            line += "; no interval: too few distinct points to resample"
        lines.append(line + ".")
        conv = fit["convergence"]
        if not conv["converged"]:
            bound = f", {', '.join(conv['on_bound'])} on a bound" if conv["on_bound"] else ""
            lines.append(f"⚠ The {arch} L(N, D) fit did not converge cleanly ({conv['message']}{bound}): read it with care.")
    if fits.get("excluded"):
        lines.append(f"{len(fits['excluded'])} run(s) left out of the fits (listed below).")
    lines.extend(fits.get("notes", []))
    return lines


def runs_table(runs: pd.DataFrame) -> Table:
    columns = {"name": "run", "status": "status", "arch": "arch", "size": "size", "n_params": "N",
               "tokens": "tokens", "lr": "lr", "train_loss": "train loss", "val_loss": "val loss",
               "flops": "FLOPs", "wall_s": "wall (s)"}
    order = [c for c in ("arch", "n_params", "tokens", "lr", "seed", "run_id") if c in runs]
    ordered = runs.sort_values(order, kind="stable") if order else runs
    rows = []
    for _, run in ordered.iterrows():
        row = []
        for col in columns:
            value = run.get(col)
            if col == "name" and (value is None or pd.isna(value)):
                value = run.get("run_id")
            row.append(fmt(value, 4 if col.endswith("loss") else 3))
        rows.append(row)
    return Table("All runs", list(columns.values()), rows)


def power_law_table(fits: dict) -> Table:
    rows = []
    for arch, fit in fits.get("power_law", {}).items():
        if fit["status"] != "ok":
            rows.append([arch, MISSING, MISSING, MISSING, MISSING, MISSING, f"skipped: {fit['reason']}"])
            continue
        offset = fit.get("offset")
        note = f"with offset: E = {fmt(offset['E'])}, b = {fmt(offset['b'])}, R² {fmt(offset['r2'])}" if offset else ""
        rows.append([arch, fit["form"], fmt_interval(fit["params"]["a"]), fmt_interval(fit["params"]["b"]),
                     fmt(fit["r2"]), str(len(fit["points"])), note])
    return Table("Loss vs compute (frontier power law, 95% bootstrap intervals)",
                 ["arch", "form", "a", "b", "R²", "frontier runs", "notes"], rows)


def parametric_table(fits: dict) -> Table:
    rows = []
    for arch, fit in fits.get("parametric", {}).items():
        if fit["status"] != "ok":
            rows.append([arch, *[MISSING] * 9, f"skipped: {fit['reason']}"])
            continue
        p, conv = fit["params"], fit["convergence"]
        state = "converged" if conv["converged"] else f"NOT converged: {conv['message']}"
        if conv["on_bound"]:
            state += f"; on bound: {', '.join(conv['on_bound'])}"
        rows.append([arch, *(fmt_interval(p[k]) for k in ("E", "A", "B", "alpha", "beta")),
                     fmt_interval(fit["exponents"]["a"]), fmt_interval(fit["exponents"]["b"]),
                     str(len(fit["points"])), fmt(fit["residual_rms"]),
                     f"{state} ({conv['iterations']} iterations); bootstrap {fit['bootstrap']['ok']}/{fit['bootstrap']['resamples']}"])
    return Table("L(N, D) = E + A/N^α + B/D^β (Chinchilla approach 3, 95% bootstrap intervals)",
                 ["arch", "E", "A", "B", "α", "β", "a = β/(α+β)", "b = α/(α+β)", "points", "rms log residual", "fit"],
                 rows)


def predictions_table(fits: dict) -> Table:
    power = fits.get("power_law", {})
    rows = []
    for arch, fit in fits.get("parametric", {}).items():
        frontier = power.get(arch, {})
        frontier_loss = {p["flops"]: p["loss"] for p in frontier.get("predictions", [])}
        for pred in fit.get("predictions", []):
            rows.append([arch, fmt(pred["flops"]), fmt_interval(pred["n_opt"]), fmt_interval(pred["d_opt"]),
                         fmt_interval(pred["tokens_per_param"]), fmt_interval(pred["loss"], 4),
                         fmt_interval(frontier_loss.get(pred["flops"]), 4)])
    return Table("Compute-optimal predictions at the budgets (C = 6ND)",
                 ["arch", "budget (FLOPs)", "N_opt", "D_opt", "tokens / parameter", "loss, L(N, D)",
                  "loss, frontier power law"], rows)


def allocation_table(fits: dict) -> Table:
    """N_opt = G * C^a by each Chinchilla approach side by side, with the optimum at the first budget."""
    budget = (fits.get("budgets") or [None])[0]
    rows = []
    for kind, label in (("approach1", "1: frontier"), ("approach2", "2: IsoFLOP"), ("parametric", "3: L(N, D)")):
        for arch, fit in fits.get(kind, {}).items():
            if fit["status"] != "ok":
                rows.append([arch, label, *[MISSING] * 5, f"skipped: {fit['reason']}"])
                continue
            e = fit["exponents"]
            first = fit["predictions"][0] if fit["predictions"] else {}
            rows.append([arch, label, fmt_interval(e["a"]), fmt_interval(e["b"]), fmt_interval(e["G"]),
                         fmt_interval(first.get("n_opt")), fmt_interval(first.get("tokens_per_param")), ""])
    return Table(f"Compute-optimal allocation N_opt = G · C^a, D_opt = C / (6 N_opt) (N_opt at {fmt(budget)} FLOPs)",
                 ["arch", "approach", "a", "b", "G", "N_opt", "tokens / parameter", "notes"], sorted(rows))


def checks_table(fits: dict) -> Table:
    """The largest compute scale held out and predicted; the learning-rate optimum's power law."""
    rows = []
    for arch, held in fits.get("held_out", {}).items():
        if held["status"] != "ok":
            rows.append([arch, "held-out prediction", MISSING, f"skipped: {held['reason']}"])
            continue
        par, power = held["parametric"], held["power_law"]
        par_text = (f"mean |relative error| {fmt_interval(par['mean_abs_relative_error'])} over {len(par['points'])} "
                    f"point(s), fit {par['convergence']}" if par["status"] == "ok" else f"skipped: {par['reason']}")
        power_text = (f"relative error {fmt_interval(power['relative_error'])}" if power["status"] == "ok"
                      else f"skipped: {power['reason']}")
        rows.append([arch, "held-out, L(N, D)", fmt(held["flops"]), par_text])
        rows.append([arch, "held-out, loss vs compute", fmt(held["flops"]), power_text])
    for arch, lr in fits.get("learning_rate", {}).items():
        law = lr.get("power_law", lr)
        text = (f"k = {fmt_interval(law['k'])}, p = {fmt_interval(law['p'])} over {law['n_points']} optima"
                if law.get("status") == "ok" else f"skipped: {law['reason']}")
        rows.append([arch, "lr_opt = k · N^-p", MISSING, text])
    multipliers = fits.get("compute_multiplier") or {"archs": {}}
    for arch, entry in multipliers["archs"].items():
        what = f"compute multiplier vs {multipliers['reference']}"
        if entry["status"] != "ok":
            rows.append([arch, what, MISSING, f"skipped: {entry['reason']}"])
            continue
        for at in entry["at"]:
            rows.append([arch, what, fmt(at["flops"]),
                         f"{fmt_interval(at['multiplier'])} at loss {fmt(at['loss'], 4)}"
                         + (" (extrapolated)" if at["extrapolated"] else " (largest compute run by both)")])
    return Table("Checks and comparisons (95% bootstrap intervals)", ["arch", "what", "FLOPs", "result"], rows)


def excluded_table(fits: dict) -> Table:
    rows = [[e["run_id"], e.get("name") or MISSING, e["reason"]] for e in fits.get("excluded", [])]
    return Table("Runs left out of the fits", ["run_id", "name", "reason"], rows)


def markdown_table(table: Table) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def summary_markdown(runs: pd.DataFrame, fits: dict) -> str:
    """The summary sentences and the runs table in Markdown, e.g. for a Prefect artifact."""
    return "\n".join(f"- {line}" for line in summary_lines(runs, fits)) + "\n\n" + markdown_table(runs_table(runs)) + "\n"
