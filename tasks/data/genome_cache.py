"""The token cache of a genome: the train and valid intervals' bases streamed into tasks.data.cache's format,
with an interval index per split (see tasks.data.genome for the input files and the tokens)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyfaidx

from tasks.atomic import build_dir, replace_dir, write_atomic
from tasks.config import DataConfig
from tasks.data.cache import FORMAT, TokenCache
from tasks.data.corpus import DataError
from tasks.data.genome import (
    EOS_ID,
    INVALID,
    LUT,
    SPLITS,
    TOKENIZER_VERSION,
    TOKENS,
    VOCAB_SIZE,
    Interval,
    char_tokenizer,
    check_contigs,
    genome_files,
    open_fasta,
    read_bed,
    split_intervals,
)
from tasks.data.identity import describe
from tasks.data.loader import INTERVALS_FILE, read_intervals, window_counts

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bases per FASTA read: memory stays bounded however long an interval is


def _read(fa: pyfaidx.Fasta, iv: Interval, a: int, b: int, fasta: Path) -> np.ndarray:
    """Token ids of bases [a, b) of the interval's contig."""
    try:
        seq = fa[iv.chrom][a:b]
    except (pyfaidx.FetchError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{fasta}: cannot read {iv.chrom}:{a}-{b} ({e}); the file is corrupt") from None
    raw = np.frombuffer(seq.encode("ascii", "replace"), np.uint8)
    if len(raw) != b - a:
        raise DataError(
            f"{fasta}: {iv.chrom}:{a}-{b} yields {len(raw)} of {b - a} bases; the file is truncated or its .fai "
            "index is stale (delete the index to rebuild it)"
        )
    ids = LUT[raw]
    bad = np.flatnonzero(ids == INVALID)
    if len(bad):
        p = a + int(bad[0])
        rec = fa.faidx.index[iv.chrom]
        byte = rec.offset + p // rec.lenc * rec.lenb + p % rec.lenc
        raise DataError(f"{fasta}: byte {byte} ({iv.chrom}:{p}) is {chr(raw[bad[0]])!r}, not a nucleotide letter")
    return ids


def _write_split(fa: pyfaidx.Fasta, intervals: list[Interval], out: Path, fasta: Path):
    """Stream the intervals' bases, each followed by <eos>, into `out`, a chunk at a time.

    Returns the interval index ((n, 2) [start, end) offsets) and the count of each token id.
    """
    spans = np.empty((len(intervals), 2), np.int64)
    counts = np.zeros(VOCAB_SIZE, np.int64)
    pos = 0
    with open(out, "wb") as fh:
        for i, iv in enumerate(intervals):
            for a in range(iv.start, iv.end, _CHUNK):
                ids = _read(fa, iv, a, min(a + _CHUNK, iv.end), fasta)
                fh.write(ids.tobytes())
                counts += np.bincount(ids, minlength=VOCAB_SIZE)
            fh.write(bytes([EOS_ID]))
            spans[i] = pos, pos + iv.end - iv.start + 1
            pos = int(spans[i, 1])
        fh.flush()
        os.fsync(fh.fileno())
    counts[EOS_ID] += len(intervals)
    return spans, counts


def _load(folder: Path) -> TokenCache | None:
    """The finished genome cache in `folder`: a loadable TokenCache whose interval index spans its streams."""
    try:
        cache = TokenCache.open(folder)
        for split, n in (("train", cache.n_train), ("val", cache.n_val)):
            spans = read_intervals(folder, split)
            if spans is None or spans.ndim != 2 or spans.shape[1] != 2 or not len(spans) or spans[-1, 1] != n:
                return None
    except (DataError, OSError, ValueError):
        return None
    return cache


def _build(fa: pyfaidx.Fasta, fasta: Path, by_split: dict[str, list[Interval]], manifest: dict, final: Path) -> None:
    """Tokenize the train and valid intervals into `final`, through a temporary folder renamed when complete."""
    tmp = build_dir(final)
    try:
        char_tokenizer().save(str(tmp / "tokenizer.json"))
        t0 = time.perf_counter()
        tokens, symbols, outputs = {}, {}, []
        for bed_split, split in SPLITS.items():
            spans, counts = _write_split(fa, by_split[bed_split], tmp / f"{split}.bin", fasta)
            np.save(tmp / INTERVALS_FILE.format(split=split), spans)
            tokens[split] = int(spans[-1, 1])
            symbols[split] = {t: int(c) for t, c in zip(TOKENS, counts) if c}
            index_file = INTERVALS_FILE.format(split=split)
            outputs += [describe(tmp / f"{split}.bin", f"{split}.bin"), describe(tmp / index_file, index_file)]
        manifest = manifest | {
            "tokenizer_sha256": hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest(),
            "tokens": tokens,
            "symbols": symbols,
            "outputs": outputs,
            "seconds": {"tokenize": round(time.perf_counter() - t0, 3)},
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        replace_dir(tmp, final, lambda d: _load(d) is not None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_genome(cfg: DataConfig) -> None:
    """The cheap checks of prepare_genome, before any compute: the files exist and the BED parses."""
    _, bed = genome_files(cfg)
    split_intervals(read_bed(bed), bed, 0)


def prepare_genome(cfg: DataConfig, data_root: Path) -> TokenCache:
    """The token cache of an hg38 config under data_root, built on first use and reused after.

    Every interval is checked against the FASTA's contigs first, whether or not a cache exists, so bad input
    stops (or is skipped) the same way on every run. The key hashes the FASTA, its index, the BED and the
    tokenizer version, not on_bad_record: on clean input both settings build the same cache.
    """
    data_root = Path(data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    fasta, bed = genome_files(cfg)
    intervals = read_bed(bed)
    fa, index = open_fasta(fasta, data_root)
    with fa:
        kept, skipped, examples = check_contigs(intervals, fa, bed, fasta, cfg.on_bad_record)
        by_split = split_intervals(kept, bed, sum(skipped.values()))
        files = [describe(fasta, fasta.name), describe(index, f"{fasta.name}.fai"), describe(bed, bed.name)]
        tokenizer = f"char-v{TOKENIZER_VERSION}"
        key = hashlib.sha256(json.dumps([FORMAT, "hg38", files, tokenizer]).encode()).hexdigest()
        final = data_root / f"tokens-{key[:16]}"
        if _load(final) is None:
            log.info("tokenizing %s over %s into %s", fasta, bed, final)
            manifest = {
                "format": FORMAT,
                "key": key,
                "source": "hg38",
                "fasta": str(fasta.absolute()),
                "bed": str(bed.absolute()),
                "files": files,
                "tokenizer": tokenizer,
                "vocab_size": VOCAB_SIZE,
                "eot_id": EOS_ID,
                "dtype": "uint8",
                "intervals": {s: len(v) for s, v in by_split.items()},
                "bases": {s: sum(iv.end - iv.start for iv in v) for s, v in by_split.items()},
                "not_tokenized": "test",
                "skipped": dict(skipped),
                "skipped_examples": examples,
            }
            _build(fa, fasta, by_split, manifest, final)
    cache = _load(final)
    if cache is None:
        raise DataError(f"{final}: the token cache just built does not load; is another process removing it?")
    if skipped:
        log.warning("%s: skipped %s intervals (see %s)", bed, dict(skipped), final / "manifest.json")
    for bed_split, split in SPLITS.items():
        if not window_counts(read_intervals(cache.dir, split), cfg.seq_len).any():
            raise DataError(
                f"{bed}: no {bed_split} interval holds data.seq_len + 1 = {cfg.seq_len + 1} tokens (its bases and "
                "the closing <eos>); shorten data.seq_len or lengthen the intervals"
            )
    return cache
