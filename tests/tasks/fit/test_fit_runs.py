"""tasks.fit end to end: the runs table in (Parquet or CSV, exclusions, the outlier rule), fits.json out
(strict JSON, layout, determinism), `scaling fit` and its flags, and the MLflow scalars."""

import json

import numpy as np
import pandas as pd
import pytest

from cli import main
from tasks.config import ConfigError, FitConfig, fit_config, sweep_from_dict
from tasks.fit import fit_file, fit_runs
from tasks.fit.entries import PER_ARCH, Fits
from tasks.fit.scalars import fit_scalars, metric_name
from tasks.fit.table import budget_groups
from tasks.track.mlflow_runs import log_fit
from tests.tasks.fit.shapes import check_shape, keys_of
from tests.tasks.fit.synthetic import grid_runs

QUICK = FitConfig(budgets=[1e20, 1e22], starts=8, bootstrap=20)
KINDS = {"loss_vs_compute", "approach1", "approach2", "parametric", "learning_rate", "held_out"}


@pytest.fixture(scope="module")
def two_archs():
    mamba = grid_runs(sizes=4, token_counts=4, seed=1).assign(arch="mamba", run_id=lambda t: "m" + t["run_id"])
    return fit_runs(pd.concat([grid_runs(sizes=4, token_counts=4), mamba], ignore_index=True), QUICK)


def test_fits_json_is_strict_and_has_every_fit(two_archs):
    assert json.loads(json.dumps(two_archs, allow_nan=False)) == two_archs
    assert (
        set(two_archs) == {"n_runs", "n_used", "excluded", "notes", "budgets", "options", "compute_multiplier"} | KINDS
    )
    for kind in KINDS:
        assert set(two_archs[kind]) == {"mamba", "transformer++"}
    assert two_archs["options"] == QUICK.model_dump(mode="json")
    assert two_archs["compute_multiplier"]["reference"] == "transformer++"
    assert set(two_archs["compute_multiplier"]["archs"]) == {"mamba"}


def test_fits_json_has_the_documented_layout_and_no_old_names(two_archs):
    check_shape(two_archs, Fits)
    assert set(PER_ARCH) == KINDS and set(Fits.__annotations__) >= KINDS | {"compute_multiplier"}
    names = keys_of(two_archs)
    assert "loss_vs_compute" in two_archs["held_out"]["mamba"] and "power_law" not in names
    # The negative controls: the old keys are not in the layout, so the check rejects them.
    old = {("power_law" if k == "loss_vs_compute" else k): v for k, v in two_archs.items()}
    with pytest.raises(AssertionError, match=r"\['power_law'\] not in Fits"):
        check_shape(old, Fits)
    held = two_archs["held_out"]["mamba"]
    with pytest.raises(AssertionError, match="power_law"):
        check_shape({**two_archs, "held_out": {"mamba": {**held, "power_law": held["loss_vs_compute"]}}}, Fits)


def test_scalars_are_named_after_the_fits(two_archs):
    _, metrics = fit_scalars(two_archs)
    b = two_archs["loss_vs_compute"]["mamba"]["params"]["b"]
    assert (metrics["fit.mamba.loss_vs_compute.b"], metrics["fit.mamba.loss_vs_compute.b_hi"]) == (b["value"], b["hi"])
    e = two_archs["parametric"]["mamba"]["params"]["E"]["value"]
    assert metrics["fit.mamba.parametric.E"] == e and "fit.mamba.parametric.objective" in metrics
    assert "fit.mamba.approach2.G" in metrics and "fit.mamba.held_out.loss_vs_compute_error" in metrics
    # Every per-architecture name is fit.<arch>.<a key of fits.json>.<name>: no bare
    # fit.<arch>.E or fit.<arch>.at_1e22..., no frontier., lr. or power_law.
    groups = {name.split(".")[2] for name in metrics if name.split(".")[1] in ("mamba", "transformerpp")}
    assert groups == set(PER_ARCH) - {"learning_rate"} | {"compute_multiplier"}  # no lr sweep: no learning-rate law
    assert not [n for n in metrics if "power_law" in n or ".frontier." in n or ".lr." in n]


def test_same_seed_same_fits_other_seed_other_intervals():
    runs = grid_runs(sizes=4, token_counts=4)
    config = FitConfig(**{**QUICK.model_dump(), "held_out": False})
    first, again = fit_runs(runs, config), fit_runs(runs, config)
    other = fit_runs(runs, FitConfig(**{**config.model_dump(), "seed": 1}))
    assert first == again
    b = first["loss_vs_compute"]["transformer++"]["params"]["b"]
    b_other = other["loss_vs_compute"]["transformer++"]["params"]["b"]
    assert b["value"] == b_other["value"] and (b["lo"], b["hi"]) != (b_other["lo"], b_other["hi"])


def test_unfinished_and_non_finite_runs_are_listed_not_fitted():
    runs = grid_runs(sizes=3, token_counts=3)
    runs.loc[0, "status"] = "diverged"
    runs.loc[1, "status"] = "failed"
    runs.loc[2, "status"] = "pending"
    runs.loc[3, "val_loss"] = np.nan
    runs.loc[4, "val_loss"] = np.inf
    runs.loc[5, "n_params"] = np.nan

    fits = fit_runs(runs, QUICK)

    reasons = {e["run_id"]: e["reason"] for e in fits["excluded"]}
    assert reasons == {
        "r0-0": "status diverged",
        "r0-1": "status failed",
        "r0-2": "status pending",
        "r1-0": "val_loss is not finite",
        "r1-1": "val_loss is not finite",
        "r1-2": "n_params, tokens or flops is not a positive number",
    }
    assert (fits["n_runs"], fits["n_used"]) == (9, 3)
    used = {p["run_id"] for p in fits["loss_vs_compute"]["transformer++"].get("points", [])}
    assert not used & set(reasons)
    assert fits["parametric"]["transformer++"]["status"] == "skipped"


def test_a_table_of_nan_losses_fits_nothing_and_says_why():
    fits = fit_runs(grid_runs(sizes=3, token_counts=3).assign(val_loss=np.nan), QUICK)
    assert fits["n_used"] == 0 and len(fits["excluded"]) == 9
    for kind in KINDS:
        assert fits[kind]["transformer++"] == {"status": "skipped", "reason": "no completed run with a finite val_loss"}


def test_outlier_rule_drops_the_highest_losses_per_arch_and_is_recorded():
    runs = grid_runs(sizes=4, token_counts=4)
    runs.loc[5, "val_loss"] *= 3  # a broken run
    mamba = runs.assign(arch="mamba", run_id=lambda t: "m" + t["run_id"])
    config = FitConfig(**{**QUICK.model_dump(), "outliers": {"drop_highest": 2}, "held_out": False})
    fits = fit_runs(pd.concat([runs, mamba], ignore_index=True), config)
    dropped = {e["run_id"] for e in fits["excluded"]}
    highest = set(runs.nlargest(2, "val_loss")["run_id"])
    assert "r1-1" in highest and dropped == highest | {"m" + r for r in highest}
    assert all("outliers.drop_highest=2" in e["reason"] for e in fits["excluded"])
    assert fits["options"]["outliers"] == {"drop_highest": 2}
    assert any("2 run(s) with the highest val_loss" in note for note in fits["notes"])
    assert fits["n_used"] == 28


def test_budget_groups_merge_runs_within_the_tolerance():
    flops = np.array([1.0e18, 1.1e18, 1.19e18, 1.0e19, 1.3e18, 0.99e19])
    assert budget_groups(flops).tolist() == [0, 0, 0, 2, 1, 2]


@pytest.mark.parametrize("column", ["n_params", "tokens", "val_loss"])
def test_missing_column_is_named(column):
    with pytest.raises(ValueError, match=column):
        fit_runs(grid_runs(sizes=2, token_counts=2).drop(columns=column), QUICK)


def test_fit_file_reads_a_bare_csv_writes_json_and_names_the_file(tmp_path):
    source = tmp_path / "runs.csv"
    grid_runs(sizes=4, token_counts=4)[["n_params", "tokens", "val_loss"]].to_csv(source, index=False)
    out = tmp_path / "fits" / "fits.json"

    fits = fit_file(source, out, QUICK)

    assert json.loads(out.read_text()) == fits
    assert fits["source"] == str(source) and fits["n_used"] == 16
    assert [p.name for p in out.parent.iterdir()] == ["fits.json"]
    assert any("no flops column: compute is C = 6 * n_params * tokens" in note for note in fits["notes"])
    assert fits["parametric"]["all"]["status"] == "ok"

    broken = tmp_path / "broken.parquet"
    grid_runs(sizes=2, token_counts=2).drop(columns="tokens").to_parquet(broken)
    with pytest.raises(ValueError, match=r"broken\.parquet.*tokens"):
        fit_file(broken, tmp_path / "never.json", QUICK)
    with pytest.raises(ValueError, match=r"\.parquet or \.csv"):
        fit_file(source.rename(tmp_path / "runs.txt"), tmp_path / "never.json", QUICK)


def test_scaling_fit_flags(tmp_path, capsys):
    source = tmp_path / "runs.parquet"
    grid_runs(sizes=4, token_counts=4).to_parquet(source)
    args = [
        "fit",
        str(source),
        "--budgets",
        "1e19,1e21",
        "--starts",
        "8",
        "--bootstrap",
        "20",
        "--seed",
        "3",
        "--drop-highest",
        "1",
        "--no-held-out",
    ]
    assert main(args) == 0
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert fits["options"] == {
        "budgets": [1e19, 1e21],
        "starts": 8,
        "bootstrap": 20,
        "seed": 3,
        "outliers": {"drop_highest": 1},
        "held_out": False,
        "reference_arch": None,
    }
    assert len(fits["excluded"]) == 1 and fits["held_out"]["transformer++"]["reason"] == "held_out is off"
    assert "L(N, D)" in capsys.readouterr().out

    assert main(["fit", str(source), "--starts", "5000", "--bootstrap", "5"]) == 2
    err = capsys.readouterr().err
    assert "starts: Chinchilla's start grid has 4500 points" in err and "bootstrap: a 95% interval needs" in err


def test_fit_config_names_the_field():
    assert FitConfig().starts == "full" and FitConfig(starts=4500).starts == 4500
    with pytest.raises(ConfigError, match="outliers.drop_highest"):
        fit_config({"outliers": {"drop_highest": -1}})
    with pytest.raises(ConfigError, match="budgets"):
        fit_config({"budgets": []})
    sweep = {"name": "t", "architectures": ["mamba"], "lr": {"values": [1e-3]}, "fit": {"reference_arch": "rwkv"}}
    with pytest.raises(ConfigError, match="fit.reference_arch 'rwkv' is not one of the sweep's architectures"):
        sweep_from_dict(sweep)
    assert sweep_from_dict({**sweep, "fit": {"starts": "full", "bootstrap": 0}}).fit.bootstrap == 0


def test_scalars_are_valid_mlflow_names_and_logged_in_batches(two_archs):
    params, metrics = fit_scalars(two_archs)
    assert metric_name("transformer++") == "transformerpp"
    assert params["fit.starts"] == "8" and params["fit.drop_highest"] == "0"
    assert params["fit.transformerpp.parametric.state"] == "converged"
    alpha = two_archs["parametric"]["transformer++"]["params"]["alpha"]
    assert metrics["fit.transformerpp.parametric.alpha"] == alpha["value"]
    assert metrics["fit.transformerpp.parametric.alpha_lo"] == alpha["lo"]
    assert metrics["fit.n_runs"] == 32 and "fit.mamba.compute_multiplier.at_1e20" in metrics
    assert "fit.transformerpp.parametric.at_1e22.n_opt_hi" in metrics
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    for name in metrics:
        _validate_metric_name(name)
    for name in params:
        _validate_param_name(name)

    class Client:
        def __init__(self):
            self.calls = []

        def log_batch(self, run_id, metrics=(), params=()):
            self.calls.append((run_id, len(metrics), len(params)))

    client = Client()
    many = {f"fit.m{i}": float(i) for i in range(2500)}
    log_fit(client, "run", {f"fit.p{i}": "x" for i in range(150)}, {**many, "fit.nan": float("nan")})
    assert client.calls == [("run", 0, 100), ("run", 0, 50), ("run", 1000, 0), ("run", 1000, 0), ("run", 500, 0)]
