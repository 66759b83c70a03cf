"""The fits' scalars as MLflow parameters and metrics, so sweeps can be compared and searched in the
MLflow UI without opening fits.json. Each is named after its place in fits.json (tasks.fit.entries):
`fit.<arch>.<fit>.<name>`, with `_lo`/`_hi` for the 95% interval, e.g. `fit.mamba.loss_vs_compute.b`,
`fit.mamba.parametric.alpha_lo`, `fit.mamba.learning_rate.p`, `fit.mamba.held_out.parametric_error`.

MLflow names allow letters, digits and `_-. /:` only: `transformer++` becomes `transformerpp`.
A budget appears as `at_1e21` (`fit.mamba.parametric.at_1e21.n_opt`); a compute multiplier at the
largest compute both architectures were run at as `compute_multiplier.observed`.
"""

from __future__ import annotations

import re

from tasks.fit.entries import (
    APPROACH1,
    APPROACH2,
    COMPUTE_MULTIPLIER,
    HELD_OUT,
    LAW,
    LEARNING_RATE,
    LOSS_VS_COMPUTE,
    OK,
    PARAMETRIC,
    Allocation,
    Fits,
    Interval,
    LossVsComputeParams,
    ParametricParams,
    ParametricPrediction,
)

# The interval groups of each fit that become metrics: {fit: ((group key, its interval names), ...)}.
INTERVALS = {
    LOSS_VS_COMPUTE: (("params", tuple(LossVsComputeParams.__annotations__)),),
    APPROACH1: (("exponents", tuple(Allocation.__annotations__)),),
    APPROACH2: (("exponents", tuple(Allocation.__annotations__)),),
    PARAMETRIC: (("params", tuple(ParametricParams.__annotations__)), ("exponents", tuple(Allocation.__annotations__))),
}
PREDICTED = tuple(k for k in ParametricPrediction.__annotations__ if k != "flops")  # per budget, of L(N, D)
INTERVAL_SUFFIXES = (("", "value"), ("_lo", "lo"), ("_hi", "hi"))


def metric_name(text: str) -> str:
    return re.sub(r"[^\w./ :-]", "_", text.replace("+", "p"))


def budget_name(flops: float) -> str:
    return "at_" + f"{flops:.3g}".replace("+", "")


def fit_scalars(fits: Fits) -> tuple[dict[str, str], dict[str, float]]:
    """(params, metrics) of a fits dict: the options as parameters, every fitted number as metrics."""
    options = fits.get("options", {})
    params = {f"fit.{k}": str(v) for k, v in options.items() if k != "outliers"}
    params["fit.drop_highest"] = str(options.get("outliers", {}).get("drop_highest", 0))
    metrics = {"fit.n_runs": fits["n_runs"], "fit.n_used": fits["n_used"], "fit.n_excluded": len(fits["excluded"])}

    def put(name: str, iv: Interval | None) -> None:
        for suffix, key in INTERVAL_SUFFIXES:
            if iv and iv.get(key) is not None:
                metrics[name + suffix] = iv[key]

    for kind, groups in INTERVALS.items():
        for arch, fit in fits.get(kind, {}).items():
            if fit["status"] == OK:
                for group, names in groups:
                    for name in names:
                        put(f"fit.{metric_name(arch)}.{kind}.{name}", fit[group][name])
    for arch, fit in fits.get(PARAMETRIC, {}).items():
        if fit["status"] != OK:
            continue
        key = f"fit.{metric_name(arch)}.{PARAMETRIC}"
        params[f"{key}.state"] = fit["convergence"]["state"]
        metrics[f"{key}.objective"] = fit["convergence"]["objective"]
        for pred in fit["predictions"]:
            for name in PREDICTED:
                put(f"{key}.{budget_name(pred['flops'])}.{name}", pred[name])
    for arch, fit in fits.get(LEARNING_RATE, {}).items():
        law = fit.get(LAW, {})
        if law.get("status") == OK:
            for name in ("k", "p"):
                put(f"fit.{metric_name(arch)}.{LEARNING_RATE}.{name}", law[name])
    for arch, fit in fits.get(HELD_OUT, {}).items():
        if fit["status"] != OK:
            continue
        if fit[PARAMETRIC]["status"] == OK:
            put(f"fit.{metric_name(arch)}.{HELD_OUT}.{PARAMETRIC}_error", fit[PARAMETRIC]["mean_abs_relative_error"])
        if fit[LOSS_VS_COMPUTE]["status"] == OK:
            put(f"fit.{metric_name(arch)}.{HELD_OUT}.{LOSS_VS_COMPUTE}_error", fit[LOSS_VS_COMPUTE]["relative_error"])
    multipliers = fits.get(COMPUTE_MULTIPLIER) or {"archs": {}}
    for arch, entry in multipliers["archs"].items():
        for i, at in enumerate(entry.get("at", [])):
            where = budget_name(at["flops"]) if i else "observed"  # the first is at the largest compute run
            put(f"fit.{metric_name(arch)}.{COMPUTE_MULTIPLIER}.{where}", at["multiplier"])
    return params, {k: float(v) for k, v in metrics.items()}
