"""The tables of a report, built from the runs table and the fits dict.

Every table is a `Table` of formatted strings, so the HTML, Markdown and PDF reports (and the
Prefect artifacts) show the same numbers. The fits dict is the output of `tasks.fit.fit_runs`
(laid out as `tasks.fit.entries.Fits`), or several of them merged by `reports.combine`.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from reports.names import APPROACH_NAMES, LOSS_VS_COMPUTE_NAME, PARAMETRIC_NAME
from reports.numbers import MISSING, fmt, fmt_interval
from tasks.fit.entries import COMPUTE_MULTIPLIER, HELD_OUT, LAW, LEARNING_RATE, LOSS_VS_COMPUTE, OK, PARAMETRIC

NOTE_CHARS = 80  # a run's message and events are cut to this in the runs table; train.log has the rest


class Table(NamedTuple):
    title: str
    columns: list[str]
    rows: list[list[str]]


def runs_table(runs: pd.DataFrame) -> Table:
    """One row a run: what it was, how it ended, what it reached and what it cost."""
    columns = {
        "name": "run",
        "sweep": "sweep",
        "status": "status",
        "arch": "arch",
        "size": "size",
        "n_params": "N",
        "tokens": "tokens D",
        "ratio": "D/N",
        "lr": "lr",
        "train_loss": "train loss",
        "val_loss": "val loss",
        "flops": "FLOPs",
        "wall_s": "wall (s)",
        "events": "events",
        "message": "note",
    }
    if "sweep" not in runs or runs["sweep"].nunique() < 2:
        columns.pop("sweep")
    order = [c for c in ("sweep", "arch", "n_params", "tokens", "lr", "seed", "run_id") if c in runs]
    ordered = runs.sort_values(order, kind="stable") if order else runs
    rows = []
    for _, run in ordered.iterrows():
        row = []
        for col in columns:
            value = run.get(col)
            if col == "name" and (value is None or pd.isna(value)):
                value = run.get("run_id")
            elif col == "ratio":
                value = run["tokens"] / run["n_params"]
            elif col in ("message", "events"):
                value = str(value or "")[:NOTE_CHARS]
            row.append(fmt(value, 4 if col.endswith("loss") else 3))
        rows.append(row)
    return Table("All runs", list(columns.values()), rows)


def loss_vs_compute_table(fits: dict) -> Table:
    rows = []
    for arch, fit in fits.get(LOSS_VS_COMPUTE, {}).items():
        if fit["status"] != OK:
            rows.append([arch, MISSING, MISSING, MISSING, MISSING, MISSING, f"skipped: {fit['reason']}"])
            continue
        offset = fit.get("offset")
        note = f"with offset: E = {fmt(offset['E'])}, b = {fmt(offset['b'])}, R² {fmt(offset['r2'])}" if offset else ""
        rows.append(
            [
                arch,
                fit["form"],
                fmt_interval(fit["params"]["a"]),
                fmt_interval(fit["params"]["b"]),
                fmt(fit["r2"]),
                str(len(fit["points"])),
                note,
            ]
        )
    return Table(
        f"{LOSS_VS_COMPUTE_NAME.capitalize()}: L = a · C^-b through the compute frontier (95% bootstrap intervals)",
        ["arch", "form", "a", "b", "R²", "frontier runs", "notes"],
        rows,
    )


def parametric_table(fits: dict) -> Table:
    rows = []
    for arch, fit in fits.get(PARAMETRIC, {}).items():
        if fit["status"] != OK:
            rows.append([arch, *[MISSING] * 9, f"skipped: {fit['reason']}"])
            continue
        p, conv, boot = fit["params"], fit["convergence"], fit["bootstrap"]
        state = "converged" if conv["converged"] else f"NOT converged: {conv['message']}"
        if conv["on_bound"]:
            state += f"; on bound: {', '.join(conv['on_bound'])}"
        rows.append(
            [
                arch,
                *(fmt_interval(p[k]) for k in ("E", "A", "B", "alpha", "beta")),
                fmt_interval(fit["exponents"]["a"]),
                fmt_interval(fit["exponents"]["b"]),
                str(len(fit["points"])),
                fmt(fit["residual_rms"]),
                f"{state} ({conv['iterations']} iterations); bootstrap {boot['ok']}/{boot['resamples']}",
            ]
        )
    return Table(
        f"{PARAMETRIC_NAME} = E + A/N^α + B/D^β (Chinchilla approach 3, 95% bootstrap intervals)",
        ["arch", "E", "A", "B", "α", "β", "a = β/(α+β)", "b = α/(α+β)", "points", "rms log residual", "fit"],
        rows,
    )


def predictions_table(fits: dict) -> Table:
    laws = fits.get(LOSS_VS_COMPUTE, {})
    rows = []
    for arch, fit in fits.get(PARAMETRIC, {}).items():
        law_loss = {p["flops"]: p["loss"] for p in laws.get(arch, {}).get("predictions", [])}
        for pred in fit.get("predictions", []):
            rows.append(
                [
                    arch,
                    fmt(pred["flops"]),
                    fmt_interval(pred["n_opt"]),
                    fmt_interval(pred["d_opt"]),
                    fmt_interval(pred["tokens_per_param"]),
                    fmt_interval(pred["loss"], 4),
                    fmt_interval(law_loss.get(pred["flops"]), 4),
                ]
            )
    return Table(
        "Compute-optimal predictions at the budgets (C = 6ND)",
        [
            "arch",
            "budget (FLOPs)",
            "N_opt",
            "D_opt",
            "tokens / parameter",
            f"loss, {PARAMETRIC_NAME}",
            f"loss, {LOSS_VS_COMPUTE_NAME}",
        ],
        rows,
    )


def allocation_table(fits: dict) -> Table:
    """N_opt = G * C^a by each Chinchilla approach side by side, with the optimum at the first budget."""
    budget = (fits.get("budgets") or [None])[0]
    rows = []
    for kind, label in APPROACH_NAMES.items():
        for arch, fit in fits.get(kind, {}).items():
            if fit["status"] != OK:
                rows.append([arch, label, *[MISSING] * 5, f"skipped: {fit['reason']}"])
                continue
            e = fit["exponents"]
            first = fit["predictions"][0] if fit["predictions"] else {}
            rows.append(
                [
                    arch,
                    label,
                    fmt_interval(e["a"]),
                    fmt_interval(e["b"]),
                    fmt_interval(e["G"]),
                    fmt_interval(first.get("n_opt")),
                    fmt_interval(first.get("tokens_per_param")),
                    "",
                ]
            )
    return Table(
        f"Compute-optimal allocation N_opt = G · C^a, D_opt = C / (6 N_opt) (N_opt at {fmt(budget)} FLOPs)",
        ["arch", "approach", "a", "b", "G", "N_opt", "tokens / parameter", "notes"],
        sorted(rows),
    )


def checks_table(fits: dict) -> Table:
    """The largest compute scale held out and predicted; the learning-rate law."""
    rows = []
    for arch, held in fits.get(HELD_OUT, {}).items():
        if held["status"] != OK:
            rows.append([arch, "held-out prediction", MISSING, f"skipped: {held['reason']}"])
            continue
        par, law = held[PARAMETRIC], held[LOSS_VS_COMPUTE]
        par_text = (
            f"mean |relative error| {fmt_interval(par['mean_abs_relative_error'])} over {len(par['points'])} "
            f"point(s), fit {par['convergence']}"
            if par["status"] == OK
            else f"skipped: {par['reason']}"
        )
        law_text = (
            f"relative error {fmt_interval(law['relative_error'])}"
            if law["status"] == OK
            else f"skipped: {law['reason']}"
        )
        rows.append([arch, f"held-out, {PARAMETRIC_NAME}", fmt(held["flops"]), par_text])
        rows.append([arch, f"held-out, {LOSS_VS_COMPUTE_NAME}", fmt(held["flops"]), law_text])
    for arch, lr in fits.get(LEARNING_RATE, {}).items():
        law = lr.get(LAW, lr)  # a skipped entry has no law, only the reason
        text = (
            f"k = {fmt_interval(law['k'])}, p = {fmt_interval(law['p'])} over {law['n_points']} optima"
            if law.get("status") == OK
            else f"skipped: {law['reason']}"
        )
        rows.append([arch, "lr_opt = k · N^-p", MISSING, text])
    for multipliers in multiplier_blocks(fits):
        for arch, entry in multipliers["archs"].items():
            what = f"compute multiplier vs {multipliers['reference']}"
            if entry["status"] != OK:
                rows.append([arch, what, MISSING, f"skipped: {entry['reason']}"])
                continue
            for at in entry["at"]:
                rows.append(
                    [
                        arch,
                        what,
                        fmt(at["flops"]),
                        f"{fmt_interval(at['multiplier'])} at loss {fmt(at['loss'], 4)}"
                        + (" (extrapolated)" if at["extrapolated"] else " (largest compute run by both)"),
                    ]
                )
    return Table("Checks and comparisons (95% bootstrap intervals)", ["arch", "what", "FLOPs", "result"], rows)


def excluded_table(fits: dict) -> Table:
    excluded = fits.get("excluded", [])
    several = any("sweep" in e for e in excluded)
    rows = [([e["sweep"]] if several else []) + [e["run_id"], e.get("name") or MISSING, e["reason"]] for e in excluded]
    return Table("Runs left out of the fits", (["sweep"] if several else []) + ["run_id", "name", "reason"], rows)


def markdown_table(table: Table) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(c) for c in table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def multiplier_blocks(fits: dict) -> list[dict]:
    """The compute multipliers of one sweep's fits (a dict), of several merged (a list), or none."""
    blocks = fits.get(COMPUTE_MULTIPLIER)
    if not blocks:
        return []
    return blocks if isinstance(blocks, list) else [blocks]


def fit_tables(fits: dict) -> list[Table]:
    return [
        loss_vs_compute_table(fits),
        parametric_table(fits),
        predictions_table(fits),
        allocation_table(fits),
        checks_table(fits),
    ]
