"""HG38 as HyenaDNA and the Mamba paper use it: a genome FASTA and a BED of intervals with a split column,
tokenized once into a token cache of single nucleotides.

The files (HyenaDNA's names, in data.path): `hg38.ml.fa`, Basenji's hg38 FASTA, read with random access through
pyfaidx (its `.fai` beside it when there is one, else an index built once under the data root, since the data
folder may be read-only); and `human-sequences.bed` (Basenji ships it as `sequences_human.bed`), lines
`chrom start end split`, 0-based half-open, split one of train / valid / test.

Tokens: `<pad>` 0, `<eos>` 1, A 2, C 3, G 4, T 5, N 6, stored as uint8. Soft-masked (lowercase) bases fold to
their uppercase ids; the other IUPAC letters (ambiguity codes, and U) carry no single base, so they become N.
Any other byte in a sequence means the FASTA is corrupt.

The cache (tasks.data.genome_cache) is tasks.data.cache's folder format, which TokenCache opens unchanged:
`train.bin` from the train intervals and `val.bin` from the valid ones (test stays out), each interval's bases
followed by `<eos>`; `tokenizer.json` (a character-level WordLevel tokenizer, for decoding); `train.intervals.npy` and
`val.intervals.npy`, each interval's [start, end) in its stream with its `<eos>`, so that training windows
(tasks.data.loader.window_batch) never straddle two intervals; and `manifest.json`, written last.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyfaidx
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from tasks.atomic import atomic_path
from tasks.config import DataConfig
from tasks.data.corpus import DataError
from tasks.data.digests import file_digest

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
INVALID = 255
_EXAMPLES = 10
_INT = re.compile(r"[0-9]+")
_FIX_PATH = (
    "set data.path to the folder holding hg38.ml.fa and human-sequences.bed (e.g. --set data.path=/datasets/hg38)"
)


def _lookup() -> np.ndarray:
    lut = np.full(256, INVALID, np.uint8)
    for ch in "ACGTN" + _OTHER_IUPAC:
        lut[ord(ch)] = lut[ord(ch.lower())] = TOKENS.index(ch) if ch in TOKENS else _N_ID
    return lut


LUT = _lookup()


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


def split_intervals(intervals: list[Interval], bed: Path, n_skipped: int) -> dict[str, list[Interval]]:
    out = {s: [iv for iv in intervals if iv.split == s] for s in BED_SPLITS}
    for split in SPLITS:
        if not out[split]:
            after = f" left after skipping {n_skipped} bad ones" if n_skipped else ""
            raise DataError(f"{bed}: no {split!r} intervals{after}; training needs train and valid intervals")
    return out


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
                with atomic_path(index) as tmp:
                    pyfaidx.Faidx(str(fasta), indexname=str(tmp)).close()
        return pyfaidx.Fasta(str(fasta), indexname=str(index), as_raw=True), index
    except (pyfaidx.FastaIndexingError, UnicodeDecodeError, ValueError, OSError) as e:
        raise DataError(f"{fasta}: not a readable FASTA ({e})") from None


def check_contigs(
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
