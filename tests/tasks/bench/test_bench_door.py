import subprocess
import sys

import pytest

import tasks.bench
from tasks.bench import BENCHMARKS
from tests.conftest import ROOT

NAMES = ["scan", "wkv", "fftconv", "throughput", "data", "fit", "gpu", "executors"]


def test_help_lists_every_benchmark_with_its_line(capsys):
    assert list(BENCHMARKS) == NAMES
    assert tasks.bench.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, line) in BENCHMARKS.items():
        assert f"  {name} " in out and line in out


def test_no_name_lists_them_as_a_usage_error(capsys):
    assert tasks.bench.main([]) == 2
    err = capsys.readouterr().err
    assert all(f"  {name} " in err for name in NAMES)


def test_an_unknown_name_is_one_line_naming_the_valid_ones():
    # Through `python -m tasks.bench`, as a user runs it: no traceback, exit 2.
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.bench", "scna", "--batch", "1"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "scaling bench: unknown benchmark 'scna'; valid: scan, wkv, fftconv, throughput, data, fit, gpu, executors"
    )
    assert proc.stdout == ""


@pytest.mark.parametrize("name", NAMES)
def test_each_benchmark_parses_its_own_flags(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        tasks.bench.main([name, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: scaling bench {name} ")


def test_python_m_tasks_bench_is_the_same_door():
    proc = subprocess.run([sys.executable, "-m", "tasks.bench", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == tasks.bench.usage() + "\n"
