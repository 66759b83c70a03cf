"""Prepare: a corpus (sample, pile, text) or a genome (hg38) into its token cache (tasks.data.cache).

`prepare_data(cfg, data_root)` resolves the corpus (tasks.data.corpus), loads or trains the tokenizer and writes
`data_root/tokens-<key16>/` holding `train.bin` and `val.bin` (flat token ids, every document followed by the
end-of-document token; uint16 when the vocabulary fits, else uint32), `tokenizer.json` and, last,
`manifest.json`. A folder without a valid manifest is never used. The key hashes the corpus's identity
(tasks.data.identity: the files' contents, the tokenizer, val_tokens and the selection); not seq_len, since any
context length can window one stream.

Validation split: the Pile layout's val.jsonl.zst (the sample corpus has one), read only as far as
val_tokens. A text folder, or a Pile folder without val.jsonl.zst, holds out the tail of its stream: the
last documents, from a document start, val_tokens tokens of them; train ends where they begin. Either way
val.bin has exactly val_tokens tokens when the source has that many.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

from tasks.atomic import build_dir, replace_dir, write_atomic
from tasks.config import DataConfig
from tasks.data.cache import FORMAT, TokenCache, load_cache, sha256_json
from tasks.data.corpus import (
    DataError,
    Skips,
    iter_records,
    iter_text_records,
    pile_files,
)
from tasks.data.encode import write_tokens
from tasks.data.genome import VOCAB_SIZE
from tasks.data.genome_cache import check_genome, prepare_genome
from tasks.data.identity import corpus_identity, corpus_path
from tasks.data.mixture import check_sets, select
from tasks.data.sample_corpus import build_sample_corpus
from tasks.data.tokenizer import end_token_id, load_tokenizer, parse_spec, user_tokenizer

log = logging.getLogger(__name__)

PARALLEL_BYTES = 32 << 20
"""Source bytes below which one process tokenizes (unless data.workers says otherwise): starting a
worker (a fresh interpreter importing the project) costs seconds, a small corpus takes no more."""
_COPY_TOKENS = 1 << 22


def check_data(cfg: DataConfig) -> None:
    """The cheap checks of prepare_data (folders and files exist, tokenizer spec parses), reading no data."""
    if cfg.source == "hg38":  # a genome, not documents
        return check_genome(cfg)
    corpus_path(cfg)
    parse_spec(cfg.tokenizer)


def vocab_size_for(cfg: DataConfig) -> int:
    """The vocabulary size a model needs for cfg's tokenizer, known before any cache is built.

    Every id in the cache is below it: a trained 'bpe:<vocab>' never exceeds <vocab> (on a small corpus it
    may stop short, leaving a few embedding rows unused).
    """
    if cfg.source == "hg38":
        return VOCAB_SIZE
    kind, vocab, path = parse_spec(cfg.tokenizer)
    if kind == "bytes":
        return 257
    if kind == "bpe":
        return vocab
    return user_tokenizer(path).get_vocab_size(with_added_tokens=True)


def _hold_out_tail(train: Path, val: Path, dtype, eot: int, n_docs: int, val_tokens: int, corpus: Path):
    """Move the stream's last documents (val_tokens tokens from a document start) out of train into val.

    Returns (train tokens, val tokens, train documents, val documents).
    """
    n = train.stat().st_size // np.dtype(dtype).itemsize
    cut = n - val_tokens  # val must start at or before this to hold val_tokens
    stream = np.memmap(train, dtype=dtype, mode="r") if cut > 0 else None
    start = 0
    for hi in range(cut, 0, -_COPY_TOKENS):
        ends = np.flatnonzero(stream[max(0, hi - _COPY_TOKENS) : hi] == eot)
        if len(ends):
            start = max(0, hi - _COPY_TOKENS) + int(ends[-1]) + 1
            break
    if start == 0:
        raise DataError(
            f"{corpus}: {n} tokens are too few to hold out data.val_tokens={val_tokens} for validation "
            "and keep whole documents for training; add text or lower data.val_tokens"
        )
    held = stream[start : start + val_tokens]
    with open(val, "wb") as fh:
        for i in range(0, val_tokens, _COPY_TOKENS):
            fh.write(held[i : i + _COPY_TOKENS].tobytes())
    val_docs = int(np.count_nonzero(held == eot)) + int(held[-1] != eot)
    train_docs = n_docs - int(np.count_nonzero(stream[start:] == eot))
    del stream, held
    with open(train, "r+b") as fh:
        fh.truncate(start * np.dtype(dtype).itemsize)
    return start, val_tokens, train_docs, val_docs


def _per_set(wrote) -> dict:
    return {
        name: {"documents": wrote.set_documents[name], "tokens": wrote.set_tokens[name]}
        for name in sorted(wrote.set_documents)
    }


def _write_streams(cfg: DataConfig, corpus: Path, layout: str, tok, tmp: Path, skips: Skips, workers: int) -> dict:
    """Tokenize train (and val, or the held-out tail) into tmp/train.bin and tmp/val.bin, fsynced;
    returns the manifest's fields about them."""
    eot = end_token_id(tok, cfg.tokenizer)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = np.dtype(np.uint16 if vocab <= 1 << 16 else np.uint32).name
    train, val = tmp / "train.bin", tmp / "val.bin"
    has_val = layout == "pile" and pile_files(corpus)[1] is not None
    write = partial(write_tokens, tok, dtype=dtype, eot=eot, workers=workers)
    wrote = write(select(_records(corpus, layout, "train", skips), cfg, weigh=True), train)
    check_sets(cfg, wrote.set_documents, corpus)
    if has_val:
        wrote_val = write(select(_records(corpus, layout, "val", skips), cfg, weigh=False), val, limit=cfg.val_tokens)
        n_train, n_val, d_train, d_val = wrote.tokens, wrote_val.tokens, wrote.documents, wrote_val.documents
    else:
        wrote_val = None
        n_train, n_val, d_train, d_val = _hold_out_tail(train, val, dtype, eot, wrote.documents, cfg.val_tokens, corpus)
    for f in (train, val):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    return {
        "vocab_size": vocab,
        "eot_id": eot,
        "dtype": dtype,
        "tokens": {"train": n_train, "val": n_val},
        "documents": {"train": d_train, "val": d_val},
        "sets": {"train": _per_set(wrote), "val": _per_set(wrote_val) if wrote_val else "held-out tail of train"},
        "val_split": "val.jsonl.zst" if has_val else "held-out tail of the stream",
    }


def _records(corpus: Path, layout: str, split: str, skips: Skips):
    if layout == "text":
        return iter_text_records(corpus, skips)
    return iter_records(corpus, split, skips)


def _build(cfg: DataConfig, corpus: Path, layout: str, files: list[dict], key: str, data_root: Path) -> None:
    final = data_root / f"tokens-{key[:16]}"
    tmp = build_dir(final)
    try:
        skips = Skips(cfg.on_bad_record)
        t0 = time.perf_counter()
        tok_cache = data_root / f"tokenizer-{sha256_json([layout, files, cfg.subsets])[:16]}"

        def train_texts():
            return (text for text, _ in select(_records(corpus, layout, "train", skips), cfg, weigh=False))

        tok = load_tokenizer(cfg.tokenizer, train_texts, tok_cache)
        t_tok = time.perf_counter() - t0
        tok.save(str(tmp / "tokenizer.json"))
        big = sum(f["size"] for f in files) >= PARALLEL_BYTES
        workers = cfg.workers or ((os.cpu_count() or 1) if big else 1)
        skips.counts.clear()  # the tokenizer's pass read the same records: count them once, below
        skips.examples.clear()
        log.info("tokenizing %s into %s (%d workers)", corpus, final, workers)
        t1 = time.perf_counter()
        streams = _write_streams(cfg, corpus, layout, tok, tmp, skips, workers)
        manifest = {
            "format": FORMAT,
            "key": key,
            "source": cfg.source,
            "corpus": str(corpus.absolute()),
            "files": files,
            "tokenizer": cfg.tokenizer,
            "tokenizer_sha256": hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest(),
            **streams,
            "selection": {"subsets": cfg.subsets, "mixture": cfg.mixture},
            "skipped": skips.to_dict(),
            "val_tokens": cfg.val_tokens,
            "workers": workers,
            "seconds": {"tokenizer": round(t_tok, 3), "tokenize": round(time.perf_counter() - t1, 3)},
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1))
        replace_dir(tmp, final, lambda d: load_cache(d) is not None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if skips.counts:
        log.warning("token cache %s: skipped %s (see its manifest.json)", final, dict(skips.counts))
    log.info("token cache %s: %s tokens", final, streams["tokens"])


def prepare_data(cfg: DataConfig, data_root: Path) -> TokenCache:
    """The token cache of cfg's corpus and tokenizer under data_root, built on first use and reused after."""
    if cfg.source == "hg38":
        return prepare_genome(cfg, data_root)
    data_root = Path(data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    corpus = corpus_path(cfg)
    if corpus is None:
        where = Path(cfg.path).expanduser() if cfg.path else data_root / "sample-corpus"
        corpus = build_sample_corpus(where, cfg.sample_bytes)
    ident = corpus_identity(cfg, corpus)
    key = sha256_json({"format": FORMAT, **ident})
    final = data_root / f"tokens-{key[:16]}"
    cache = load_cache(final)
    if cache is None:
        _build(cfg, corpus, ident["layout"], ident["files"], key, data_root)
        cache = load_cache(final)
        if cache is None:
            raise DataError(f"{final}: the token cache just built does not load; is another process removing it?")
    for split, n in (("train", cache.n_train), ("validation", cache.n_val)):
        if n < cfg.seq_len + 1:
            raise DataError(
                f"{cache.dir}: the {split} split has {n} tokens, fewer than data.seq_len + 1 = {cfg.seq_len + 1}; "
                "give the corpus more text (or raise data.sample_bytes / data.val_tokens) or shorten data.seq_len"
            )
    return cache
