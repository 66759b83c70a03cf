"""End to end through `scaling run`: real DeepSpeed, MLflow (SQLite), Parquet and Prefect."""

import json
import re
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient
from pypdf import PdfReader

from models.registry import ARCHITECTURES
from reports.figures import FIGURES
from reports.pdf import find_chromium
from tests.conftest import scaling, tiny_sweep


def child_runs(out, sweep):
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(sweep)
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if "run_id" in r.data.tags], [r for r in runs if r.data.tags.get("kind") == "sweep"]


def prefect_artifacts(prefect_env) -> list[tuple[str | None, str, str]]:
    """(key, type, data) of every artifact the flow runs left in the temporary server's database."""
    with sqlite3.connect(Path(prefect_env["PREFECT_HOME"]) / "prefect.db") as db:
        return db.execute("SELECT key, type, data FROM artifact ORDER BY created").fetchall()


def test_sweep_end_to_end_then_rerun_skips_and_adds(tmp_path, prefect_env):
    out = tmp_path / "out"
    sweep = tiny_sweep(tmp_path, lrs="[3.0e-3, 1.0e-2]")
    first = scaling("run", sweep, "--output", out, env=prefect_env)
    assert "report:" in first.stdout

    sweep_dir = out / "sweeps" / "tiny"
    runs = pq.read_table(sweep_dir / "runs.parquet").to_pandas()
    assert len(runs) == 4 and set(runs.status) == {"completed"}
    assert (runs.val_loss < 5.7).all(), "loss should fall below ln(320) = 5.77, the uniform start"
    assert runs.n_params.nunique() == 2 and runs.lr.nunique() == 2

    curves = pq.read_table(sweep_dir / "curves.parquet").to_pandas()
    assert not curves.duplicated(["run_id", "step"]).any()
    for rid, c in curves.groupby("run_id"):
        steps = runs.set_index("run_id").loc[rid, "steps"]
        assert c.step.max() == steps
        first_val, last_val = c.val_loss.dropna().iloc[[0, -1]]
        assert last_val < first_val or len(c.val_loss.dropna()) == 1

    fits = json.loads((sweep_dir / "fits.json").read_text())
    assert fits["n_runs"] == 4
    html = (sweep_dir / "report" / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == len(FIGURES)
    assert (sweep_dir / "report" / "report.md").is_file()
    assert (sweep_dir / "sweep.yaml").read_text().startswith("name: tiny\n")
    if find_chromium():  # CI installs it (make browser); elsewhere the report says how to get the PDF
        assert len(PdfReader(sweep_dir / "report" / "report.pdf").pages) >= len(FIGURES) + 2

    # fit and report re-run alone on the recorded results, with no training
    refit = tmp_path / "refit.json"
    scaling("fit", sweep_dir / "runs.parquet", "--out", refit)
    assert json.loads(refit.read_text())["n_runs"] == 4
    before = (sweep_dir / "report" / "report.md").read_text()
    (sweep_dir / "report" / "report.md").unlink()
    assert "report.html" in scaling("report", sweep_dir).stdout
    assert (sweep_dir / "report" / "report.md").read_text() == before

    client, children, parents = child_runs(out, "tiny")
    assert len(children) == 4 and len(parents) == 1
    assert {r.data.tags["status"] for r in children} == {"completed"}
    assert all(re.fullmatch(r"transformer\+\+-t[12]-[\d.]+K-lr(3e-3|1e-2)", r.info.run_name) for r in children)
    exp = children[0].info.experiment_id
    found = client.search_runs([exp], "params.arch = 'transformer++' and tags.status = 'completed'")
    assert sorted(r.info.run_id for r in found) == sorted(r.info.run_id for r in children)
    hist = client.get_metric_history(children[0].info.run_id, "train_loss")
    assert len(hist) == len({m.step for m in hist}) > 1
    by_tokens = client.get_metric_history(children[0].info.run_id, "by_tokens/train_loss")
    assert sorted(m.step for m in by_tokens) == sorted(
        curves[curves.run_id == children[0].data.tags["run_id"]].tokens_seen
    )
    parent_files = {f.path for f in client.list_artifacts(parents[0].info.run_id)}
    assert {"report", "fits.json", "runs.parquet", "sweep.yaml", "tiny.yaml"} <= parent_files
    assert "report/report.html" in {f.path for f in client.list_artifacts(parents[0].info.run_id, "report")}
    assert parents[0].data.metrics["fit.n_used"] == 4 and parents[0].data.params["fit.starts"] == "8"
    assert parents[0].data.tags["mlflow.note.content"].startswith("- 4 runs: 4 completed")
    # Prefect: progress while the grid trained, then the summary and the runs table
    artifacts = prefect_artifacts(prefect_env)
    assert {("sweep-tiny", "markdown"), ("sweep-tiny-runs", "table")} <= {(k, t) for k, t, _ in artifacts}
    assert [float(d) for _, t, d in artifacts if t == "progress"] == [100.0]

    # Re-running the same sweep trains nothing; adding a learning rate trains only the new points.
    # This one blows up: its points are marked diverged, the sweep goes on, the fit leaves them out.
    mtimes = {p: p.stat().st_mtime for p in (out / "runs").glob("*/status.json")}
    scaling("run", tiny_sweep(tmp_path, lrs="[3.0e-3, 1.0e-2, 1.0e+30]"), "--output", out, env=prefect_env)
    assert all(p.stat().st_mtime == m for p, m in mtimes.items())
    runs2 = pq.read_table(sweep_dir / "runs.parquet").to_pandas()
    assert len(runs2) == 6 and len(list((out / "runs").glob("*/status.json"))) == 6
    assert set(runs2[runs2.lr > 1].status) == {"diverged"} and set(runs2[runs2.lr < 1].status) == {"completed"}
    fits = json.loads((sweep_dir / "fits.json").read_text())
    assert sorted(e["run_id"] for e in fits["excluded"]) == sorted(runs2[runs2.lr > 1].run_id)
    assert "2 diverged" in (sweep_dir / "report" / "report.md").read_text()
    client, children, parents = child_runs(out, "tiny")
    assert len(children) == 6 and len(parents) == 2  # one child per grid point, re-used by the re-run
    diverged = client.search_runs([exp], "tags.status = 'diverged'")
    assert sorted(r.data.tags["run_id"] for r in diverged) == sorted(runs2[runs2.lr > 1].run_id)
    curves2 = pq.read_table(sweep_dir / "curves.parquet").to_pandas()
    assert not curves2.duplicated(["run_id", "step"]).any()


def test_two_ranks_with_zero_stage_2(tmp_path, prefect_env):
    out = tmp_path / "out"
    scaling(
        "run",
        tiny_sweep(tmp_path, sizes="[t1]", concurrency=1),
        "--output",
        out,
        "--set",
        "resources.ranks_per_run=2",
        "--set",
        "train.zero_stage=2",
        env=prefect_env,
    )
    runs = pq.read_table(out / "sweeps" / "tiny" / "runs.parquet").to_pandas()
    assert list(runs.status) == ["completed"] and runs.val_loss[0] < 5.7
    log = next(out.glob("runs/*/train.log")).read_text()
    assert "2 rank(s) on cpu, ZeRO stage 2" in log


def test_every_architecture_trains_with_deepspeed(tmp_path, prefect_env):
    archs = sorted(ARCHITECTURES)
    out = tmp_path / "out"
    sweep = tiny_sweep(tmp_path, archs=json.dumps(archs), sizes="[t1]", multipliers="[1.0]", eval_interval=10)
    scaling("run", sweep, "--output", out, env=prefect_env)
    runs = pq.read_table(out / "sweeps" / "tiny" / "runs.parquet").to_pandas()
    assert sorted(runs.arch) == archs and set(runs.status) == {"completed"}
    curves = pq.read_table(out / "sweeps" / "tiny" / "curves.parquet").to_pandas()
    for arch, c in curves.groupby("arch"):
        val = c.val_loss.dropna()
        assert len(val) >= 3 and val.iloc[-1] < val.iloc[0] - 0.05, (arch, list(val))


def test_plan_prints_the_grid_without_compute(tmp_path):
    proc = scaling("plan", tiny_sweep(tmp_path, lrs="[1.0e-3, 3.0e-3]"))
    assert "n_params" in proc.stdout and "4 runs" in proc.stdout
    assert not (tmp_path / "corpus").exists(), "plan must not build data"


def test_bad_input_is_rejected_before_any_compute(tmp_path, prefect_env):
    sweep = tiny_sweep(tmp_path)
    proc = scaling("run", sweep, "--output", tmp_path / "out", "--set", "lr.values=[0]", env=prefect_env, check=False)
    assert proc.returncode == 2 and "lr.values" in proc.stderr
    assert not (tmp_path / "out").exists()
    proc = scaling("plan", "pile", check=False)
    assert proc.returncode == 2 and "/data/pile" in proc.stderr and "data.path" in proc.stderr
