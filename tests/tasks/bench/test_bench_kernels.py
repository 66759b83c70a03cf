"""The kernel benchmarks at their smallest sizes: the checks pass and each path has a ratio against ref."""

import tasks.bench
from tests.tasks.bench.support import RATIO, table


def run(capsys, *argv: str) -> str:
    assert tasks.bench.main(list(argv)) == 0
    return capsys.readouterr().out


def test_scan_checks_the_fast_paths_and_times_them_against_ref(capsys):
    out = run(capsys, "scan", "--batch", "1", "--seq-len", "64", "--ref-seq-len", "32", "--d-inner", "8")
    errors = table(out, "fast paths vs ref")
    assert sorted(errors) == ["chunked", "cpu"]
    assert all(float(row["max rel error"]) < 1e-4 for row in errors.values())
    rows = table(out, "batch 1, L 64")
    assert list(rows) == ["ref", "chunked", "cpu"]
    assert rows["ref"]["timed at L"] == "32" and rows["ref"]["speed-up vs ref"] == "1.00x"
    for path in ("chunked", "cpu"):
        assert rows[path]["timed at L"] == "64"
        assert RATIO.fullmatch(rows[path]["speed-up vs ref"])
        assert rows[path]["memory vs ref"] == "-"  # the reference's memory was at L 32
    assert "ref timed at L 32, its time scaled x2 to L 64" in out


def test_wkv_scales_the_reference_past_its_budget(capsys):
    out = run(
        capsys, "wkv", "--batch", "1", "--seq-len", "512", "--channels", "8", "--repeats", "1", "--ref-budget", "0"
    )
    errors = table(out, "fast vs ref")["fast"]
    assert [k for k in errors if k] == ["y", "dw", "du", "dk", "dv"]
    assert all(float(errors[k]) < 1e-4 for k in ("y", "dw", "du", "dk", "dv"))
    rows = table(out, "B=1 T=512 C=8")
    assert rows["ref"]["timed at T"] == "256" and rows["ref"]["speed-up vs ref"] == "1.00x"
    assert rows["fast"]["timed at T"] == "512" and RATIO.fullmatch(rows["fast"]["speed-up vs ref"])


def test_fftconv_checks_fast_against_ref_on_a_slice_of_channels(capsys):
    out = run(capsys, "fftconv", "--shape", "2", "8", "64", "--ref-channels", "4")
    assert float(table(out, "fast vs ref on 4 channels")["fast"]["max |fast - ref|"]) < 1e-5
    rows = table(out, "B 2, C 8, L 64")
    assert rows["ref (Toeplitz)"]["timed on C"] == "4" and rows["ref (Toeplitz)"]["speed-up vs ref"] == "1.00x"
    assert rows["fast (rfft)"]["timed on C"] == "8" and RATIO.fullmatch(rows["fast (rfft)"]["speed-up vs ref"])
