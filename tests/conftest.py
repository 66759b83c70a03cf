import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def tiny_sweep(tmp_path: Path, **extra) -> Path:
    """A sweep small enough for tests: the sample corpus, 2 sizes, seconds per run."""
    text = f"""
name: {extra.pop("name", "tiny")}
data:
  source: sample
  path: {tmp_path / "corpus"}
  tokenizer: bpe:320
  seq_len: 32
  val_tokens: 4096
  sample_bytes: 400000
architectures: {extra.pop("archs", "[transformer++]")}
ladder: tiny
sizes: {extra.pop("sizes", "[t1, t2]")}
tokens:
  per_param: 1
  multipliers: {extra.pop("multipliers", "[0.5]")}
lr:
  values: {extra.pop("lrs", "[3.0e-3]")}
train:
  batch_tokens: 1024
  eval_interval: {extra.pop("eval_interval", 20)}
  checkpoint_interval: {extra.pop("checkpoint_interval", 20)}
  log_interval: 5
resources:
  concurrency: {extra.pop("concurrency", 2)}
  threads_per_rank: 1
  flops_per_s: 1.0e+9
fit:
  starts: 8
"""
    assert not extra, extra
    p = tmp_path / "tiny.yaml"
    p.write_text(text)
    return p


def curve_losses(run) -> list[tuple[int, float]]:
    """A run's committed curve as (step, train_loss) pairs, to hold a faulted run to its reference."""
    from tasks.track.curves import read_curve

    curve = read_curve(run.curve)
    return list(zip(curve.column("step").to_pylist(), curve.column("train_loss").to_pylist()))


def scaling(*args, env=None, check=True, timeout=900) -> subprocess.CompletedProcess:
    """The `scaling` command as a user runs it."""
    exe = Path(sys.executable).with_name("scaling")
    proc = subprocess.run(
        [str(exe), *map(str, args)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"scaling {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture
def prefect_env(tmp_path):
    """An isolated Prefect home, so tests neither see nor leave flow runs of their own."""
    return {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


@pytest.fixture
def fired(request):
    """`fired(cond, what)`: assert that an injected fault took effect. A fault test that never fired proves
    nothing, so it fails; `scaling doctor` reads these records for its `fired` column (tasks.doctor)."""

    def check(cond, what: str) -> None:
        request.node.user_properties.append(("fired", (bool(cond), what)))
        assert cond, f"the fault did not fire: {what}"

    return check
