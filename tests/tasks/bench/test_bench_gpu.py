"""The GPU benchmark's dry run: the same code on the CPU at toy sizes (the Triton kernels under Triton's
interpreter), every table read back; what it imports for the parts a bare GPU image must run; and its one
line where there is no GPU."""

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.tasks.bench.support import RATIO, read_tables, table

requires_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@requires_triton
def test_the_dry_run_runs_every_part_on_the_cpu_and_prints_every_table():
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.bench", "gpu", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("cpu: ") and "Triton interpreted" in out.splitlines()[0]
    errors = table(out, "Triton scan vs the reference")
    assert list(errors) == ["float32", "bfloat16"]
    assert all(row["within"] == "yes" and float(row["ddelta_bias"]) >= 0 for row in errors.values()), errors
    speed = table(out, "selective scan forward + backward")
    assert list(speed) == ["chunked (1, 16, 8, 4)", "triton (1, 16, 8, 4)"]
    assert speed["chunked (1, 16, 8, 4)"]["speed-up vs chunked"] == "1.00x"
    (training,) = [rows for title, rows in read_tables(out).items() if title.startswith("training step tokens/s")]
    assert [(r["model"], r["seq"]) for r in training] == [
        ("transformer++ t1", "32"),
        ("transformer++ t2", "32"),
        ("mamba t1", "32"),
        ("transformer++ t1", "128"),
        ("mamba t1", "128"),
        ("hyena t1", "32"),
        ("rwkv t1", "32"),
    ]
    assert all(RATIO.fullmatch(r["vs transformer++"]) and float(r["tokens/s"].replace(",", "")) > 0 for r in training)
    assert {r["vs transformer++"] for r in training if r["model"] == "transformer++ t1"} == {"1.00x"}
    assert "ranks on ['cpu']" in out and "sweep finished in" in out  # end to end, through scaling run
    targets = table(out, "targets")
    assert len(targets) == 6 and {row["met"] for row in targets.values()} <= {"yes", "NO"}


def test_the_parts_a_bare_gpu_image_runs_import_none_of_the_pipelines_packages():
    code = "import sys, tasks.bench.gpu; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    for package in ("deepspeed", "prefect", "mlflow", "pydantic", "pyarrow", "yaml", "tokenizers", "scipy"):
        assert f"'{package}'" not in loaded.stdout, package


def test_without_a_gpu_it_says_so_in_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.bench", "gpu", "--parts", "train"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "scaling bench gpu: no CUDA device here; --dry-run runs the same code on the CPU"
