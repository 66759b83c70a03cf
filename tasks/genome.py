"""HG38 as HyenaDNA and the Mamba paper use it: a genome FASTA and a BED of intervals with a split column,
tokenized once into a token cache of single nucleotides.

The files (HyenaDNA's names, in data.path): `hg38.ml.fa`, Basenji's hg38 FASTA, read with random access through
pyfaidx (its `.fai` beside it when there is one, else an index built once under the data root, since the data
folder may be read-only); and `human-sequences.bed` (Basenji ships it as `sequences_human.bed`), lines
`chrom start end split`, 0-based half-open, split one of train / valid / test.

Tokens: `<pad>` 0, `<eos>` 1, A 2, C 3, G 4, T 5, N 6, stored as uint8. Soft-masked (lowercase) bases fold to
their uppercase ids; the other IUPAC letters (ambiguity codes, and U) carry no single base, so they become N.
Any other byte in a sequence means the FASTA is corrupt.

The cache is tasks.data's folder format, which TokenCache opens unchanged: `train.bin` from the train
intervals and `val.bin` from the valid ones (test stays out), each interval's bases followed by `<eos>`;
`tokenizer.json` (a character-level WordLevel tokenizer, for decoding); `train.intervals.npy` and
`val.intervals.npy`, each interval's [start, end) in its stream with its `<eos>`, so that training windows
(tasks.loader.window_batch) never straddle two intervals; and `manifest.json`, written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyfaidx
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from tasks.config import DataConfig
from tasks.corpus import DataError, build_dir, file_digest, replace_dir, write_atomic
from tasks.data import _FORMAT, TokenCache  # a genome cache is one of tasks.data's caches, in its format
from tasks.loader import INTERVALS_FILE, read_intervals, window_counts

log = logging.getLogger(__name__)

FASTA_NAME = "hg38.ml.fa"
BED_NAMES = ("human-sequences.bed", "sequences_human.bed")
BED_SPLITS = ("train", "valid", "test")
SPLITS = {"train": "train", "valid": "val"}
"""BED split -> cache split; test intervals are counted but not tokenized."""
TOKENS = ("<pad>", "<eos>", "A", "C", "G", "T", "N")
VOCAB_SIZE = len(TOKENS)
EOS_ID = TOKENS.index("<eos>")
# Bump when the ids or the stream layout change, so that caches built before are rebuilt.
TOKENIZER_VERSION = 1

_N_ID = TOKENS.index("N")
_OTHER_IUPAC = "RYSWKMBDHVU"
_INVALID = 255
_CHUNK = 1 << 20  # bases per FASTA read: memory stays bounded however long an interval is
_EXAMPLES = 10
_INT = re.compile(r"[0-9]+")
_FIX_PATH = (
    "set data.path to the folder holding hg38.ml.fa and human-sequences.bed (e.g. --set data.path=/datasets/hg38)"
)


def _lookup() -> np.ndarray:
    lut = np.full(256, _INVALID, np.uint8)
    for ch in "ACGTN" + _OTHER_IUPAC:
        lut[ord(ch)] = lut[ord(ch.lower())] = TOKENS.index(ch) if ch in TOKENS else _N_ID
    return lut


_LUT = _lookup()


def char_tokenizer() -> Tokenizer:
    """The HF tokenizer of the same ids: uppercase A/C/G/T/N, anything else N (its unknown token)."""
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOKENS)}, unk_token="N"))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(c.lower(), c) for c in "ACGTN"])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "<eos>"])
    return tok


# ---------------------------------------------------------------- the input files


@dataclass(frozen=True)
class Interval:
    chrom: str
    start: int
    end: int
    split: str
    line: int
    """Its line in the BED, for error messages."""


def genome_files(cfg: DataConfig) -> tuple[Path, Path]:
    """The FASTA and the BED of an hg38 config, checked to exist (nothing is read)."""
    if cfg.path is None:
        raise DataError(f"data.source 'hg38' needs its data folder: {_FIX_PATH}")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path {root.absolute()}: no such folder (data.source 'hg38'); {_FIX_PATH}")
    fasta = root / (cfg.fasta or FASTA_NAME)
    if not fasta.is_file():
        raise DataError(
            f"{fasta.absolute()}: no such FASTA; put HyenaDNA's hg38.ml.fa there (gunzip hg38.ml.fa.gz) "
            "or set data.fasta"
        )
    beds = [root / cfg.bed] if cfg.bed else [root / name for name in BED_NAMES]
    bed = next((b for b in beds if b.is_file()), None)
    if bed is None:
        raise DataError(
            f"no BED of intervals: looked for {', '.join(str(b.absolute()) for b in beds)}; put HyenaDNA's "
            "human-sequences.bed there or set data.bed"
        )
    return fasta, bed


def read_bed(bed: Path) -> list[Interval]:
    """Every interval of the BED, in file order; DataError naming the line on any malformed one.

    Blank lines, comments (`#`) and UCSC `track` / `browser` header lines are passed over.
    """
    out = []
    with open(bed, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(f"{bed}, line {n}: not UTF-8 text") from None
            if not line or line.startswith(("#", "track", "browser")):
                continue
            cols = line.split()
            if len(cols) != 4:
                raise DataError(f"{bed}, line {n}: {len(cols)} columns; expected 4: chrom start end split")
            chrom, start, end, split = cols
            if not (_INT.fullmatch(start) and _INT.fullmatch(end)):
                raise DataError(f"{bed}, line {n}: start {start!r} and end {end!r} must be non-negative integers")
            if int(start) >= int(end):
                raise DataError(f"{bed}, line {n}: start {start} is not before end {end}")
            if split not in BED_SPLITS:
                raise DataError(f"{bed}, line {n}: split {split!r} is not one of {', '.join(BED_SPLITS)}")
            out.append(Interval(chrom, int(start), int(end), split, n))
    return out


def _by_split(intervals: list[Interval], bed: Path, n_skipped: int) -> dict[str, list[Interval]]:
    by_split = {s: [iv for iv in intervals if iv.split == s] for s in BED_SPLITS}
    for split in SPLITS:
        if not by_split[split]:
            after = f" left after skipping {n_skipped} bad ones" if n_skipped else ""
            raise DataError(f"{bed}: no {split!r} intervals{after}; training needs train and valid intervals")
    return by_split


def _gzipped(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_fasta(fasta: Path, data_root: Path) -> tuple[pyfaidx.Fasta, Path]:
    """The FASTA with random access, and the .fai index it reads through; DataError if it is not a FASTA."""
    if _gzipped(fasta):
        raise DataError(f"{fasta}: compressed (gzip); decompress it first (gunzip)")
    index = fasta.with_name(fasta.name + ".fai")
    try:
        if not index.is_file():
            index = data_root / "faidx" / f"{fasta.name}-{file_digest(fasta)[:16]}.fai"
            if not index.is_file():
                # Built under a temporary name: a killed build never leaves an index that looks whole.
                index.parent.mkdir(parents=True, exist_ok=True)
                tmp = index.with_name(f".{index.name}.tmp-{os.getpid()}")
                pyfaidx.Faidx(str(fasta), indexname=str(tmp)).close()
                os.replace(tmp, index)
        return pyfaidx.Fasta(str(fasta), indexname=str(index), as_raw=True), index
    except (pyfaidx.FastaIndexingError, UnicodeDecodeError, ValueError, OSError) as e:
        raise DataError(f"{fasta}: not a readable FASTA ({e})") from None


def _check_contigs(
    intervals: list[Interval], fa: pyfaidx.Fasta, bed: Path, fasta: Path, on_bad: str
) -> tuple[list[Interval], Counter, list[str]]:
    """The intervals that lie inside a contig of the FASTA; the others stop the build or, with
    on_bad_record 'skip', are left out and counted by cause (with the first few as examples)."""
    lengths = {name: rec.rlen for name, rec in fa.faidx.index.items()}
    kept, skipped, examples = [], Counter(), []
    for iv in intervals:
        if iv.chrom not in lengths:
            cause, what = "missing_contig", f"contig {iv.chrom!r} is not in {fasta}"
        elif iv.end > lengths[iv.chrom]:
            cause = "outside_contig"
            what = f"{iv.chrom}:{iv.start}-{iv.end} ends past {iv.chrom}'s {lengths[iv.chrom]} bases in {fasta}"
        else:
            kept.append(iv)
            continue
        where = f"{bed}, line {iv.line}: {what}"
        if on_bad == "error":
            raise DataError(f"{where}; fix the BED or set data.on_bad_record: skip to leave such intervals out")
        skipped[cause] += 1
        if len(examples) < _EXAMPLES:
            examples.append(where)
    return kept, skipped, examples


# ---------------------------------------------------------------- the cache


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
    ids = _LUT[raw]
    bad = np.flatnonzero(ids == _INVALID)
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


def _describe(path: Path, name: str | None = None) -> dict:
    return {"name": name or path.name, "size": path.stat().st_size, "sha256": file_digest(path)}


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
            outputs += [_describe(tmp / f"{split}.bin"), _describe(tmp / INTERVALS_FILE.format(split=split))]
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
    _by_split(read_bed(bed), bed, 0)


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
        kept, skipped, examples = _check_contigs(intervals, fa, bed, fasta, cfg.on_bad_record)
        by_split = _by_split(kept, bed, sum(skipped.values()))
        files = [_describe(fasta), _describe(index, f"{fasta.name}.fai"), _describe(bed)]
        tokenizer = f"char-v{TOKENIZER_VERSION}"
        key = hashlib.sha256(json.dumps([_FORMAT, "hg38", files, tokenizer]).encode()).hexdigest()
        final = data_root / f"tokens-{key[:16]}"
        if _load(final) is None:
            log.info("tokenizing %s over %s into %s", fasta, bed, final)
            manifest = {
                "format": _FORMAT,
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
