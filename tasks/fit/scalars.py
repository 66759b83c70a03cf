"""The fits' scalars as MLflow parameters and metrics, named `fit.<arch>.<name>` (`_lo`/`_hi` for the
95% interval), so sweeps can be compared and searched in the MLflow UI without opening fits.json.

MLflow names allow letters, digits and `_-. /:` only: `transformer++` becomes `transformerpp`.
A budget appears as `at_1e21`; a compute multiplier at the largest compute both architectures were
run at as `multiplier.observed`.
"""

from __future__ import annotations

import re

INTERVAL_KEYS = {
    "power_law": ("params", ("a", "b"), "frontier."),
    "approach1": ("exponents", ("a", "b", "G"), "approach1."),
    "approach2": ("exponents", ("a", "b", "G"), "approach2."),
}


def metric_name(text: str) -> str:
    return re.sub(r"[^\w./ :-]", "_", text.replace("+", "p"))


def budget_name(flops: float) -> str:
    return "at_" + f"{flops:.3g}".replace("+", "")


def fit_scalars(fits: dict) -> tuple[dict[str, str], dict[str, float]]:
    """(params, metrics) of a fits dict: the options as parameters, every fitted number as metrics."""
    options = fits.get("options", {})
    params = {f"fit.{k}": str(v) for k, v in options.items() if k != "outliers"}
    params["fit.drop_highest"] = str(options.get("outliers", {}).get("drop_highest", 0))
    metrics = {"fit.n_runs": fits["n_runs"], "fit.n_used": fits["n_used"], "fit.n_excluded": len(fits["excluded"])}

    def put(name: str, iv: dict | None) -> None:
        for suffix, key in (("", "value"), ("_lo", "lo"), ("_hi", "hi")):
            if iv and iv.get(key) is not None:
                metrics[name + suffix] = iv[key]

    for kind, (group, names, prefix) in INTERVAL_KEYS.items():
        for arch, fit in fits.get(kind, {}).items():
            if fit["status"] == "ok":
                for name in names:
                    put(f"fit.{metric_name(arch)}.{prefix}{name}", fit[group][name])
    for arch, fit in fits.get("parametric", {}).items():
        key = f"fit.{metric_name(arch)}"
        if fit["status"] != "ok":
            continue
        params[f"{key}.parametric.state"] = fit["convergence"]["state"]
        for name, iv in (*fit["params"].items(), *fit["exponents"].items()):
            put(f"{key}.{name}", iv)
        metrics[f"{key}.objective"] = fit["convergence"]["objective"]
        for pred in fit["predictions"]:
            for name in ("n_opt", "d_opt", "tokens_per_param", "loss"):
                put(f"{key}.{budget_name(pred['flops'])}.{name}", pred[name])
    for arch, fit in fits.get("learning_rate", {}).items():
        law = fit.get("power_law", {})
        if law.get("status") == "ok":
            put(f"fit.{metric_name(arch)}.lr.k", law["k"])
            put(f"fit.{metric_name(arch)}.lr.p", law["p"])
    for arch, fit in fits.get("held_out", {}).items():
        if fit["status"] == "ok":
            if fit["parametric"]["status"] == "ok":
                put(f"fit.{metric_name(arch)}.held_out.parametric_error", fit["parametric"]["mean_abs_relative_error"])
            if fit["power_law"]["status"] == "ok":
                put(f"fit.{metric_name(arch)}.held_out.power_law_error", fit["power_law"]["relative_error"])
    multipliers = fits.get("compute_multiplier") or {"archs": {}}
    for arch, entry in multipliers["archs"].items():
        for i, at in enumerate(entry.get("at", [])):
            where = budget_name(at["flops"]) if i else "observed"  # the first is at the largest compute run
            put(f"fit.{metric_name(arch)}.multiplier.{where}", at["multiplier"])
    return params, {k: float(v) for k, v in metrics.items()}
