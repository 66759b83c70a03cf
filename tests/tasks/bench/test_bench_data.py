"""The data benchmark's three parts, each at its smallest: a 1 MB sample corpus, a t1 model on a
tiny sweep's data, a few MiB of synthetic Pile text."""

import pytest

import tasks.bench
from tests.tasks.bench.support import RATIO, TINY_SETS, table


def run(capsys, *argv: str) -> str:
    assert tasks.bench.main(["data", *argv]) == 0
    return capsys.readouterr().out


def test_tokenization_compares_workers_with_one_process_on_identical_tokens(capsys):
    # The benchmark exits non-zero if the two token files differ.
    out = run(capsys, "--only", "tokenize", "--sample-mb", "1", "--tokenizer", "bpe:320", "--workers", "2")
    rows = table(out, "1. tokenization, bpe:320")
    assert list(rows) == ["1 process", "2 workers"]
    assert rows["1 process"]["speed-up vs 1 process"] == "1.00x"
    assert RATIO.fullmatch(rows["2 workers"]["speed-up vs 1 process"])
    assert all(int(r["tokens/s"].replace(",", "")) > 0 for r in rows.values())


def test_loader_wait_is_a_share_of_the_step_timed_beside_it(capsys, tmp_path):
    flags = "--only loader --archs transformer++ --size t1 --workers 1".split()
    out = run(capsys, *flags, "--output", str(tmp_path), *TINY_SETS)
    row = table(out, "2. loader wait at size t1")["transformer++"]
    batch_ms, step_ms = float(row["batch ms"]), float(row["step ms"])
    assert step_ms > 0
    # From the cells, which are rounded: to within a few hundredths of a percent.
    assert float(row["wait"].rstrip("%")) == pytest.approx(100 * batch_ms / (batch_ms + step_ms), abs=0.03)
    assert "batch 32 x 32 tokens" in out  # 1024 tokens a step in windows of 32
    assert (tmp_path / "data").is_dir()  # the token cache went where --output said


def test_cache_build_memory_is_reported_against_the_corpus(capsys):
    out = run(capsys, "--only", "memory", "--memory-corpus-mb", "2")
    rows = table(out, "3. cache build over")
    assert rows["corpus text"]["vs corpus"] == "1.00x"
    for name in ("build process, peak resident", "largest worker, peak resident"):
        assert int(rows[name]["MiB"]) > 0 and RATIO.fullmatch(rows[name]["vs corpus"])
