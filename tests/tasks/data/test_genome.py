"""The HG38 source on a small genome in the real formats: a FASTA (60-column lines, soft-masked lowercase, N runs,
an ambiguity code) and a HyenaDNA-style BED (`chrom start end split`, with a track line and a comment)."""

import gzip
import json
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from models.registry import model_config
from tasks.config import PROJECT_ROOT, DataConfig, load_sweep
from tasks.data import DataError, TokenCache, check_data, prepare_data, vocab_size_for
from tasks.data.genome import EOS_ID, TOKENS, VOCAB_SIZE
from tasks.data.loader import INTERVALS_FILE, read_intervals, window_batch

BED = """track name=sequences description="train/valid/test regions"
# chrom\tstart\tend\tsplit
chr1\t0\t1200\ttrain
chr1\t1300\t2900\ttrain
chr2\t0\t1000\ttrain
chr2\t1000\t1900\tvalid
chrX\t100\t700\tvalid
chr1\t2900\t3000\ttest
"""
TRAIN = [("chr1", 0, 1200), ("chr1", 1300, 2900), ("chr2", 0, 1000)]
VALID = [("chr2", 1000, 1900), ("chrX", 100, 700)]


def _write_fasta(path: Path, contigs: dict[str, str], width: int = 60) -> Path:
    with open(path, "w") as fh:
        for name, seq in contigs.items():
            fh.write(f">{name} some description\n")
            fh.writelines(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
    return path


def _contigs() -> dict[str, str]:
    rng = np.random.default_rng(0)

    def seq(n: int) -> str:
        bases = rng.choice(list("ACGTacgt"), n)
        bases[n // 3 : n // 3 + 50] = "N"  # an assembly gap
        bases[n // 2 : n // 2 + 20] = "n"
        bases[n // 4] = "R"  # an ambiguity code
        bases[n // 5] = "y"
        return "".join(bases)

    return {"chr1": seq(3000), "chr2": seq(2000), "chrX": seq(800)}


def _expected(seq: str) -> list[int]:
    """Ids by hand: uppercase; ambiguity codes are N."""
    return [TOKENS.index(c) if c in "ACGTN" else TOKENS.index("N") for c in seq.upper()]


@pytest.fixture
def genome(tmp_path) -> Path:
    root = tmp_path / "hg38"
    root.mkdir()
    _write_fasta(root / "hg38.ml.fa", _contigs())
    (root / "human-sequences.bed").write_text(BED)
    return root


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(source="hg38", path=str(root), seq_len=kw.pop("seq_len", 32), **kw)


def _manifest(cache: TokenCache) -> dict:
    return json.loads((cache.dir / "manifest.json").read_text())


def test_tokens_round_trip_to_the_sequence_case_folded(genome, tmp_path):
    cache = prepare_data(_cfg(genome), tmp_path / "data")
    assert cache == TokenCache.open(cache.dir)
    assert cache.vocab_size == VOCAB_SIZE == vocab_size_for(_cfg(genome)) and cache.eot_id == EOS_ID
    contigs = _contigs()
    tok = Tokenizer.from_file(str(cache.tokenizer_path))
    for split, stream, expected in (("train", cache.train_tokens(), TRAIN), ("val", cache.val_tokens(), VALID)):
        spans = read_intervals(cache.dir, split)
        assert spans[0, 0] == 0 and spans[-1, 1] == len(stream) and (spans[1:, 0] == spans[:-1, 1]).all()
        for (a, b), (chrom, start, end) in zip(spans, expected, strict=True):
            seq = contigs[chrom][start:end]
            assert stream[a:b].tolist() == _expected(seq) + [EOS_ID]
            assert tok.encode(seq).ids == _expected(seq), "tokenizer.json agrees with the cache"
            assert tok.decode(stream[a : b - 1].tolist()) == re.sub("[RY]", "N", seq.upper())
    m = _manifest(cache)
    assert m["intervals"] == {"train": 3, "valid": 2, "test": 1} and m["skipped"] == {}
    assert m["tokens"] == {"train": 3800 + 3, "val": 1500 + 2}
    train_seq = "".join(contigs[c][a:b] for c, a, b in TRAIN).upper()
    assert m["symbols"]["train"]["N"] == sum(train_seq.count(c) for c in "NRY")
    assert m["symbols"]["train"]["A"] == train_seq.count("A")
    assert {f["name"] for f in m["files"]} == {"hg38.ml.fa", "hg38.ml.fa.fai", "human-sequences.bed"}
    assert not (genome / "hg38.ml.fa.fai").exists(), "the index is built under the data root, not in the data"


def test_training_windows_never_cross_an_interval(genome, tmp_path):
    cache = prepare_data(_cfg(genome, seq_len=64), tmp_path / "data")
    train, spans = cache.train_tokens(), read_intervals(cache.dir, "train")
    seen = 0
    for step in range(8):
        x, y = window_batch(train, spans, step, 0, 1, batch_per_rank=8, seq_len=64, seed=0)
        # <eos> closes each interval: inside a window it can only be the very last target
        assert not (x == EOS_ID).any() and not (y[:, :-1] == EOS_ID).any()
        seen += int((y[:, -1] == EOS_ID).sum())
    assert seen > 0, "the last window of an interval predicts its <eos>"


def test_a_second_prepare_reuses_the_cache_and_a_changed_bed_rebuilds_it(genome, tmp_path):
    data = tmp_path / "data"
    first = prepare_data(_cfg(genome), data)
    mtime = (first.dir / "train.bin").stat().st_mtime_ns
    assert prepare_data(_cfg(genome, seq_len=64), data) == first
    assert (first.dir / "train.bin").stat().st_mtime_ns == mtime
    (genome / "human-sequences.bed").write_text(BED.replace("chr2\t0\t1000\ttrain", "chr2\t0\t900\ttrain"))
    second = prepare_data(_cfg(genome), data)
    assert second.dir != first.dir and second.n_train == first.n_train - 100
    _write_fasta(genome / "hg38.ml.fa", {**_contigs(), "chrY": "ACGT" * 10})
    assert prepare_data(_cfg(genome), data).dir not in (first.dir, second.dir)


def test_a_killed_build_is_never_used(genome, tmp_path):
    data = tmp_path / "data"
    cache = prepare_data(_cfg(genome), data)
    good = (cache.dir / "train.bin").read_bytes()
    # a kill before the rename leaves a temporary folder; one after a half-finished copy, no manifest
    leftover = data / f".{cache.dir.name}-{socket.gethostname()}-999999999-killed"
    elsewhere = data / f".{cache.dir.name}-another-host-999999999-building"
    shutil.copytree(cache.dir, leftover)
    elsewhere.mkdir()
    (cache.dir / "manifest.json").unlink()
    (cache.dir / "train.bin").write_bytes(good[:100])
    rebuilt = prepare_data(_cfg(genome), data)
    assert rebuilt.dir == cache.dir and (rebuilt.dir / "train.bin").read_bytes() == good
    assert not leftover.exists(), "the dead builder's folder is cleared"
    assert elsewhere.exists(), "a build on another host sharing the folder is not this host's to judge"
    (cache.dir / INTERVALS_FILE.format(split="val")).unlink()  # a cache without its index is not whole either
    assert read_intervals(prepare_data(_cfg(genome), data).dir, "val") is not None


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "line,message",
    [
        ("chr1\t0\t100", r"3 columns; expected 4: chrom start end split"),
        ("chr1\t0\t100\ttrain\textra", r"5 columns"),
        ("chr1\t0\t1e3\ttrain", r"start '0' and end '1e3' must be non-negative integers"),
        ("chr1\t-5\t100\ttrain", r"start '-5' and end '100' must be non-negative integers"),
        ("chr1\t100\t100\ttrain", r"start 100 is not before end 100"),
        ("chr1\t0\t100\tvalidation", r"split 'validation' is not one of train, valid, test"),
    ],
)
def test_a_malformed_bed_line_stops_with_its_file_and_line(genome, tmp_path, line, message):
    bed = genome / "human-sequences.bed"
    bed.write_text(BED + line + "\n")
    for call in (lambda cfg: check_data(cfg), lambda cfg: prepare_data(cfg, tmp_path / "data")):
        with pytest.raises(DataError, match=re.escape(f"{bed}, line 9: ") + message):
            call(_cfg(genome, on_bad_record="skip"))  # syntax errors stop even where skipping is allowed
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").glob("tokens-*"))


@pytest.mark.parametrize(
    "line,cause,message",
    [
        ("chr7\t0\t100\ttrain", "missing_contig", r"contig 'chr7' is not in .*hg38\.ml\.fa"),
        ("chrX\t700\t801\ttrain", "outside_contig", r"chrX:700-801 ends past chrX's 800 bases"),
    ],
)
def test_an_interval_off_the_genome_stops_or_is_skipped_and_counted(genome, tmp_path, line, cause, message):
    bed = genome / "human-sequences.bed"
    bed.write_text(BED + line + "\n")
    with pytest.raises(DataError, match=re.escape(f"{bed}, line 9: ") + message + ".*on_bad_record: skip"):
        prepare_data(_cfg(genome), tmp_path / "data")
    cache = prepare_data(_cfg(genome, on_bad_record="skip"), tmp_path / "data")
    m = _manifest(cache)
    assert m["skipped"] == {cause: 1} and m["intervals"]["train"] == 3
    assert m["skipped_examples"][0].startswith(f"{bed}, line 9: ")
    with pytest.raises(DataError, match=re.escape(f"{bed}, line 9")):
        prepare_data(_cfg(genome), tmp_path / "data")  # an existing cache does not hide bad input


def test_a_split_with_no_intervals_stops(genome, tmp_path):
    bed = genome / "human-sequences.bed"
    bed.write_text("\n".join(x for x in BED.splitlines() if "valid" not in x) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{bed}: no 'valid' intervals;")):
        check_data(_cfg(genome))
    bed.write_text(BED.replace("chr2\t1000", "chr9\t1000").replace("chrX\t100", "chr9\t100"))
    with pytest.raises(DataError, match=r"no 'valid' intervals left after skipping 2 bad ones"):
        prepare_data(_cfg(genome, on_bad_record="skip"), tmp_path / "data")


def test_intervals_shorter_than_a_window_stop(genome, tmp_path):
    with pytest.raises(DataError, match=r"no valid interval holds data\.seq_len \+ 1 = 1025 tokens"):
        prepare_data(_cfg(genome, seq_len=1024), tmp_path / "data")


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", r"not a readable FASTA \(.*does not contain a valid sequence"),
        (b"ACGT\nACGT\n", r"not a readable FASTA \(Unexpected text before the first sequence"),
        (b">chr1\nACGTACGT\nACG\nACGTACGT\n", r"not a readable FASTA \(.*not consistent.*at line 3"),
        (bytes(range(256)) * 4, r"not a readable FASTA"),
        (gzip.compress(b">chr1\nACGT\n", mtime=0), r"compressed \(gzip\); decompress it first"),
    ],
)
def test_an_unreadable_fasta_stops(genome, tmp_path, content, message):
    (genome / "hg38.ml.fa").write_bytes(content)
    with pytest.raises(DataError, match=re.escape(str(genome / "hg38.ml.fa")) + ": " + message):
        prepare_data(_cfg(genome), tmp_path / "data")


def test_a_corrupt_or_truncated_sequence_stops_naming_the_place(genome, tmp_path):
    fasta = genome / "hg38.ml.fa"
    contigs = _contigs()
    _write_fasta(fasta, {**contigs, "chr2": contigs["chr2"][:500] + "*" + contigs["chr2"][501:]})
    # chr2's bases start after chr1 (header + 50 lines of 61 bytes) and its own header line
    byte = len(">chr1 some description\n") + 50 * 61 + len(">chr2 some description\n") + 8 * 61 + 20
    with pytest.raises(DataError, match=re.escape(f"{fasta}: byte {byte} (chr2:500) is '*', not a nucleotide")):
        prepare_data(_cfg(genome), tmp_path / "data")

    _write_fasta(fasta, contigs)
    prepare_data(_cfg(genome), tmp_path / "data")
    shutil.copy(next((tmp_path / "data" / "faidx").glob("*.fai")), genome / "hg38.ml.fa.fai")
    with open(fasta, "r+b") as fh:  # cut inside chrX, under an index that still lists its full length
        fh.truncate(fasta.stat().st_size - 400)
    os.utime(genome / "hg38.ml.fa.fai")  # newer than the FASTA, so pyfaidx takes it as current
    with pytest.raises(DataError, match=re.escape(f"{fasta}: chrX:100-700 yields") + r".*truncated"):
        prepare_data(_cfg(genome), tmp_path / "data2")


def test_missing_files_and_foreign_tokenizers_are_rejected_before_any_compute(genome, tmp_path):
    with pytest.raises(DataError, match=r"data\.path .*/nowhere: no such folder.*--set data\.path="):
        check_data(_cfg(tmp_path / "nowhere"))
    (genome / "human-sequences.bed").rename(genome / "sequences_human.bed")  # Basenji's own name is found too
    check_data(_cfg(genome))
    (genome / "sequences_human.bed").unlink()
    with pytest.raises(DataError, match=r"no BED of intervals: looked for .*human-sequences\.bed.*data\.bed"):
        check_data(_cfg(genome))
    with pytest.raises(DataError, match=r"other\.fa: no such FASTA.*data\.fasta"):
        check_data(_cfg(genome, fasta="other.fa"))
    with pytest.raises(ValueError, match=r"hg38 is read as single-nucleotide characters"):
        DataConfig(source="hg38", path=str(genome), tokenizer="bpe:512")
    with pytest.raises(ValueError, match=r"'char' is the tokenizer of data.source hg38 only"):
        DataConfig(source="sample", tokenizer="char")
    assert DataConfig(source="hg38").tokenizer == "char"


def test_the_shipped_sweep_is_the_paper_dna_study():
    cfg = load_sweep(PROJECT_ROOT / "deployments" / "sweeps" / "hg38.yaml")
    assert cfg.data.source == "hg38" and cfg.data.seq_len == 1024 and cfg.data.tokenizer == "char"
    assert cfg.lr.values == [1e-3, 2e-3, 4e-3, 8e-3] and cfg.train.batch_tokens == 2**20
    assert set(cfg.architectures) == {"mamba", "hyena", "transformer++"}
    params = [model_config("mamba", s.model_dump(), VOCAB_SIZE, 1024).n_params() for s in cfg.size_ladder()]
    assert 240e3 < params[0] < 270e3 and 40e6 < params[-1] < 41e6 and params == sorted(params)
