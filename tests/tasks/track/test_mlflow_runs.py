"""tasks.track.mlflow_runs: runs that read in the MLflow UI and searches that work; a re-run sweep re-uses its
child runs; a slow or dead store never stops a run, and what it missed is sent when it answers."""

import socket
import threading
import time
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from tasks.layout import Layout, RunDir
from tasks.track import mlflow_store
from tasks.track.curves import CurveLog
from tasks.track.mlflow_runs import child_run, finish_child, open_sweep, open_tracking, tracking_uri
from tasks.track.mlflow_store import MetricSender


def spec(arch: str, size: str, lr: str) -> SimpleNamespace:
    """The RunSpec fields tracking reads, named as tasks.plan names them."""
    n, tokens = {"350m": 350_000_000, "760m": 760_000_000}[size], 7_000_000_000
    return SimpleNamespace(
        sweep="demo",
        run_id=f"{arch}-{size}-{lr}",
        name=f"{arch}-{size}-7B-lr{lr}",
        arch=arch,
        size=size,
        n_layer=24,
        d_model=1024,
        n_params=n,
        n_params_nonembed=n,
        tokens=tokens,
        steps=4,
        lr=float(lr),
        seed=0,
        batch_tokens=tokens // 4,
        seq_len=2048,
        flops=6.0 * n * tokens,
        zero_stage=1,
        precision="bf16",
        ranks=1,
    )


def write_curve(run_dir, s, steps=(1, 2, 3, 4)) -> list[dict]:
    curve = CurveLog(
        run_dir / "curve",
        {k: getattr(s, k) for k in ("sweep", "run_id", "arch", "n_params", "n_params_nonembed", "tokens", "lr")},
    )
    for step in steps:
        curve.append(
            step=step,
            tokens_seen=step * s.batch_tokens,
            flops=1.0,
            train_loss=4.0 / step,
            val_loss=4.2 / step if step % 2 == 0 else float("nan"),
            lr_now=s.lr,
            grad_norm=1.0,
            tokens_per_s=1e5,
            wall_s=float(step),
            timestamp_ms=1_700_000_000_000 + step,
        )
    return curve.flush()


@pytest.fixture(autouse=True)
def no_outage(monkeypatch):
    """Each test starts with every store presumed up."""
    monkeypatch.setattr(mlflow_store, "_down_until", {})


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_sweep(store, tmp_path, specs, statuses) -> tuple[str, str]:
    """One invocation of a sweep as the flow drives tracking: parent, child per point, curve, finish."""
    exp, parent = open_sweep(store, "demo", tmp_path / "artifacts", {"code_version": "1"})
    for s, status in zip(specs, statuses):
        assert child_run(store, exp, parent, s) is not None
        write_curve(tmp_path / s.run_id, s)
        assert finish_child(store, exp, parent, s, RunDir(tmp_path / s.run_id), status)
    return exp, parent


def test_a_rerun_reuses_one_child_per_point_and_searches_find_them(store, tmp_path):
    specs = [spec("mamba", "350m", "1.5e-3"), spec("mamba", "760m", "1.5e-3"), spec("transformer++", "350m", "3e-3")]
    exp, first_parent = run_sweep(store, tmp_path, specs, ["completed", "diverged", "completed"])
    _, second_parent = run_sweep(store, tmp_path, specs, ["completed", "diverged", "completed"])

    client = MlflowClient(store)
    points = client.search_runs([exp], "tags.kind = 'run'")
    assert sorted(r.info.run_name for r in points) == sorted(s.name for s in specs)
    assert "mamba-350m-7B-lr1.5e-3" in {r.info.run_name for r in points}
    assert {r.data.tags["mlflow.parentRunId"] for r in points} == {first_parent}
    assert len(client.search_runs([exp], "tags.kind = 'sweep'")) == 2 and second_parent != first_parent

    def names(query: str) -> set[str]:
        return {r.info.run_name for r in client.search_runs([exp], query)}

    assert names("params.arch = 'mamba'") == {specs[0].name, specs[1].name}
    assert names("tags.status = 'completed'") == {specs[0].name, specs[2].name}
    assert names("params.arch = 'mamba' and tags.status = 'completed'") == {specs[0].name}
    assert names("params.size = '350m' and params.tokens_per_param = '20'") == {specs[0].name, specs[2].name}
    assert names("metrics.val_loss < 2.2") == {s.name for s in specs}  # the last val_loss, 4.2 / 4


def test_metrics_carry_the_step_and_the_tokens(store, tmp_path):
    s = spec("mamba", "350m", "1.5e-3")
    exp, _ = run_sweep(store, tmp_path, [s], ["completed"])
    client = MlflowClient(store)
    run = client.search_runs([exp], "tags.kind = 'run'")[0].info.run_id
    by_step = client.get_metric_history(run, "train_loss")
    by_tokens = client.get_metric_history(run, "by_tokens/train_loss")
    tokens_seen = client.get_metric_history(run, "tokens_seen")
    assert sorted(m.step for m in by_step) == [1, 2, 3, 4]
    assert (
        sorted(m.step for m in by_tokens)
        == sorted(int(m.value) for m in tokens_seen)
        == [step * s.batch_tokens for step in (1, 2, 3, 4)]
    )
    assert sorted(m.step for m in client.get_metric_history(run, "by_tokens/val_loss")) == [
        2 * s.batch_tokens,
        4 * s.batch_tokens,
    ]


def test_a_failing_store_is_caught_up_when_it_answers(store, tmp_path, monkeypatch):
    s = spec("mamba", "350m", "1.5e-3")
    exp, parent = open_sweep(store, "demo", tmp_path / "artifacts", {})
    rows = write_curve(tmp_path / s.run_id, s)
    real = MlflowClient.log_batch
    monkeypatch.setattr(MlflowClient, "log_batch", lambda *a, **k: (_ for _ in ()).throw(OSError("store down")))

    assert not finish_child(store, exp, parent, s, RunDir(tmp_path / s.run_id), "completed")
    assert not (tmp_path / s.run_id / "mlflow.json").exists()
    assert not mlflow_store.available(store)  # later calls skip the store instead of each timing out

    monkeypatch.setattr(MlflowClient, "log_batch", real)
    monkeypatch.setattr(mlflow_store, "_down_until", {})  # OUTAGE_S has passed
    assert finish_child(store, exp, parent, s, RunDir(tmp_path / s.run_id), "completed")
    client = MlflowClient(store)
    run = client.search_runs([exp], f"tags.run_id = '{s.run_id}'")
    assert len(run) == 1 and run[0].data.tags["status"] == "completed" and run[0].info.status == "FINISHED"
    assert len(client.get_metric_history(run[0].info.run_id, "train_loss")) == len(rows)
    # Sent once: a second finish with nothing new makes no call.
    monkeypatch.setattr(MlflowClient, "log_batch", lambda *a, **k: pytest.fail("re-sent an up-to-date point"))
    assert finish_child(store, exp, parent, s, RunDir(tmp_path / s.run_id), "completed")


def test_a_dead_store_costs_seconds_not_minutes(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for key in mlflow_store.HTTP_DEFAULTS:  # this module's bounds, not the environment's
        monkeypatch.delenv(key, raising=False)
    s = spec("mamba", "350m", "1.5e-3")
    write_curve(tmp_path, s)
    t0 = time.monotonic()
    assert child_run(dead, "1", "parent", s) is None
    assert not finish_child(dead, "1", "parent", s, RunDir(tmp_path), "completed")
    assert time.monotonic() - t0 < 10


def test_a_hanging_store_never_holds_up_training(tmp_path, monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()  # and never answers
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    s = spec("mamba", "350m", "1.5e-3")
    rows = write_curve(tmp_path, s)
    sender = MetricSender(f"http://127.0.0.1:{server.getsockname()[1]}", "run")
    t0 = time.monotonic()
    for _ in range(50):
        sender.send(rows)
    assert time.monotonic() - t0 < 0.5, "sending must only enqueue"
    assert not sender.close(timeout_s=20)  # gave up on the store, within its timeout
    assert sender.failures == 50 and accepted
    server.close()


def test_the_store_is_the_sweep_s_else_the_environment_s_else_the_output_folder_s(tmp_path, monkeypatch):
    layout = Layout.at(tmp_path / "out")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, layout) == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.internal:5000")
    assert tracking_uri(None, layout) == "http://tracking.internal:5000"
    assert tracking_uri("http://other:5000", layout) == "http://other:5000"


def test_a_sweep_on_a_store_elsewhere_records_there_not_in_the_output_folder_s(store, tmp_path):
    layout = Layout.at(tmp_path / "out")
    tracking = open_tracking(store, layout, "demo", {"name": "demo"}, {})
    assert tracking.uri == store and tracking.parent_run_id
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(tracking.parent_run_id).info.experiment_id == tracking.experiment_id
    assert not (tmp_path / "out" / "mlflow.db").exists()
