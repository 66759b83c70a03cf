"""The token cache: a corpus tokenized once into flat memory-mapped token streams, and the batches drawn from it.

`prepare_data(cfg, data_root)` resolves the corpus (tasks.corpus), loads or trains the tokenizer and writes
`data_root/tokens-<key16>/` holding `train.bin` and `val.bin` (flat token ids, every document followed by the
end-of-document token; uint16 when the vocabulary fits, else uint32), `tokenizer.json` and, last,
`manifest.json`. A folder without a valid manifest is never used. The key hashes the source files (see
`file_digest`), the tokenizer and val_tokens; not seq_len, since any context length can window one stream.

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
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from tasks.config import DataConfig
from tasks.corpus import (
    DataError,
    build_sample_corpus,
    check_sample_dir,
    file_digest,
    iter_documents,
    iter_text_documents,
    pile_files,
    replace_dir,
    text_files,
    write_atomic,
)
from tasks.tokenizer import (
    end_token_id,
    load_tokenizer,
    parse_spec,
    user_tokenizer,
)

__all__ = [
    "DataError",
    "TokenCache",
    "build_sample_corpus",
    "check_data",
    "end_token_id",
    "iter_documents",
    "iter_text_documents",
    "load_tokenizer",
    "prepare_data",
    "vocab_size_for",
]

log = logging.getLogger(__name__)

_FORMAT = 1
_BATCH_CHARS = 4 << 20
_BATCH_DOCS = 1024
_COPY_TOKENS = 1 << 22


# ---------------------------------------------------------------- the cache


@dataclass(frozen=True)
class TokenCache:
    """A built token cache: what training needs to open its streams, read back from manifest.json."""

    dir: Path
    vocab_size: int
    dtype: str
    n_train: int
    n_val: int
    key: str
    eot_id: int

    @classmethod
    def open(cls, folder: Path) -> TokenCache:
        """The finished cache in `folder` (as prepare_data returned it), for a training process to read."""
        cache = _load(Path(folder))
        if cache is None:
            raise DataError(f"{folder}: not a finished token cache (no valid manifest.json); run prepare_data")
        return cache

    @property
    def tokenizer_path(self) -> Path:
        return self.dir / "tokenizer.json"

    def train_tokens(self) -> np.memmap:
        return np.memmap(self.dir / "train.bin", dtype=self.dtype, mode="r", shape=(self.n_train,))

    def val_tokens(self) -> np.memmap:
        return np.memmap(self.dir / "val.bin", dtype=self.dtype, mode="r", shape=(self.n_val,))


def _corpus_path(cfg: DataConfig) -> Path | None:
    """The corpus folder of pile/text sources, checked to exist and hold files (no reading); None for sample."""
    if cfg.source == "sample":
        if cfg.path is not None:
            check_sample_dir(Path(cfg.path).expanduser())
        return None
    example = "/datasets/pile" if cfg.source == "pile" else "/datasets/my-text"
    fix = f"set data.path to the corpus folder (e.g. --set data.path={example})"
    if cfg.path is None:
        raise DataError(f"data.source {cfg.source!r} needs a corpus folder: {fix}")
    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        raise DataError(f"data.path {path.absolute()}: no such folder (data.source {cfg.source!r}); {fix}")
    if cfg.source == "pile" and not pile_files(path)[0]:
        raise DataError(
            f"{path.absolute()}: no Pile train shards (NN.jsonl.zst, e.g. 00.jsonl.zst) in it or in its "
            f"train/; {fix}"
        )
    if cfg.source == "text" and not text_files(path):
        raise DataError(f"{path.absolute()}: no .txt, .jsonl or .jsonl.zst files in it; {fix}")
    return path


def check_data(cfg: DataConfig) -> None:
    """The cheap checks of prepare_data (folders and files exist, tokenizer spec parses), reading no data."""
    _corpus_path(cfg)
    parse_spec(cfg.tokenizer)


def vocab_size_for(cfg: DataConfig) -> int:
    """The vocabulary size a model needs for cfg's tokenizer, known before any cache is built.

    Every id in the cache is below it: a trained 'bpe:<vocab>' never exceeds <vocab> (on a small corpus it
    may stop short, leaving a few embedding rows unused).
    """
    kind, vocab, path = parse_spec(cfg.tokenizer)
    if kind == "bytes":
        return 257
    if kind == "bpe":
        return vocab
    return user_tokenizer(path).get_vocab_size(with_added_tokens=True)


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _load(folder: Path) -> TokenCache | None:
    """The cache in `folder` if its manifest is there and matches the files; else None (to be rebuilt)."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
        n = m["tokens"]
        cache = TokenCache(folder, m["vocab_size"], m["dtype"], n["train"], n["val"], m["key"], m["eot_id"])
        itemsize = np.dtype(cache.dtype).itemsize
        sizes_ok = all(
            (folder / f"{split}.bin").stat().st_size == n[split] * itemsize for split in ("train", "val")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cache if m.get("format") == _FORMAT and sizes_ok and cache.tokenizer_path.is_file() else None


def _batches(docs: Iterable[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for d in docs:
        if not d:
            continue
        batch.append(d)
        size += len(d)
        if size >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_tokens(tok: Tokenizer, docs: Iterable[str], path: Path, dtype, eot: int, limit: int | None = None):
    """Tokenize documents in batches to a flat file, each followed by `eot`; stop after `limit` tokens.

    Returns (tokens written, documents read).
    """
    n_tokens = n_docs = 0
    with open(path, "wb") as fh:
        for batch in _batches(docs):
            ids = [e.ids for e in tok.encode_batch(batch, add_special_tokens=False)]
            sizes = np.array([len(x) + 1 for x in ids])
            starts = np.cumsum(sizes) - sizes
            arr = np.full(int(sizes.sum()), eot, dtype=dtype)
            for x, start in zip(ids, starts):
                arr[start : start + len(x)] = x
            if limit is not None and n_tokens + len(arr) >= limit:
                keep = limit - n_tokens
                fh.write(arr[:keep].tobytes())
                return limit, n_docs + int(np.searchsorted(starts, keep))
            fh.write(arr.tobytes())
            n_tokens += len(arr)
            n_docs += len(batch)
    return n_tokens, n_docs


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


def _build(cfg: DataConfig, corpus: Path, layout: str, files: list[dict], key: str, data_root: Path) -> None:
    final = data_root / f"tokens-{key[:16]}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=data_root))
    try:
        t0 = time.perf_counter()
        tok_cache = data_root / f"tokenizer-{_sha256_json([layout, files])[:16]}"
        tok = load_tokenizer(cfg.tokenizer, corpus, tok_cache, source=layout)
        t_tok = time.perf_counter() - t0
        tok.save(str(tmp / "tokenizer.json"))
        eot = end_token_id(tok, cfg.tokenizer)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
        log.info("tokenizing %s into %s (vocab %d)", corpus, final, vocab)

        t1 = time.perf_counter()
        train, val = tmp / "train.bin", tmp / "val.bin"
        has_val = layout == "pile" and pile_files(corpus)[1] is not None
        if has_val:
            n_train, d_train = _write_tokens(tok, iter_documents(corpus, "train"), train, dtype, eot)
            n_val, d_val = _write_tokens(tok, iter_documents(corpus, "val"), val, dtype, eot, cfg.val_tokens)
        else:
            docs = iter_documents(corpus, "train") if layout == "pile" else iter_text_documents(corpus)
            _, d_all = _write_tokens(tok, docs, train, dtype, eot)
            n_train, n_val, d_train, d_val = _hold_out_tail(train, val, dtype, eot, d_all, cfg.val_tokens, corpus)
        t_tokenize = time.perf_counter() - t1
        for f in (train, val):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())

        manifest = {
            "format": _FORMAT,
            "key": key,
            "source": cfg.source,
            "corpus": str(corpus.absolute()),
            "files": files,
            "tokenizer": cfg.tokenizer,
            "tokenizer_sha256": hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest(),
            "vocab_size": vocab,
            "eot_id": eot,
            "dtype": np.dtype(dtype).name,
            "tokens": {"train": n_train, "val": n_val},
            "documents": {"train": d_train, "val": d_val},
            "val_split": "val.jsonl.zst" if has_val else "held-out tail of the stream",
            "val_tokens": cfg.val_tokens,
            "seconds": {"tokenizer": round(t_tok, 3), "tokenize": round(t_tokenize, 3)},
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        replace_dir(tmp, final, lambda d: _load(d) is not None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("token cache %s: %d train, %d val tokens", final, n_train, n_val)


def prepare_data(cfg: DataConfig, data_root: Path) -> TokenCache:
    """The token cache of cfg's corpus and tokenizer under data_root, built on first use and reused after."""
    data_root = Path(data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    corpus = _corpus_path(cfg)
    _, _, tok_file = parse_spec(cfg.tokenizer)
    if corpus is None:
        where = Path(cfg.path).expanduser() if cfg.path else data_root / "sample-corpus"
        corpus = build_sample_corpus(where, cfg.sample_bytes)
    layout = "text" if cfg.source == "text" else "pile"
    if layout == "pile":
        shards, val = pile_files(corpus)
        sources = shards + ([val] if val else [])
    else:
        sources = text_files(corpus)
    files = [
        {"name": p.relative_to(corpus).as_posix(), "size": p.stat().st_size, "sha256": file_digest(p)}
        for p in sources
    ]
    tokenizer = f"file:{file_digest(tok_file)}" if tok_file else cfg.tokenizer
    key = _sha256_json(
        {"format": _FORMAT, "layout": layout, "files": files, "tokenizer": tokenizer, "val_tokens": cfg.val_tokens}
    )
    final = data_root / f"tokens-{key[:16]}"
    cache = _load(final)
    if cache is None:
        _build(cfg, corpus, layout, files, key, data_root)
        cache = _load(final)
        if cache is None:
            raise DataError(f"{final}: the token cache just built does not load; is another process removing it?")
    for split, n in (("train", cache.n_train), ("validation", cache.n_val)):
        if n < cfg.seq_len + 1:
            raise DataError(
                f"{cache.dir}: the {split} split has {n} tokens, fewer than data.seq_len + 1 = {cfg.seq_len + 1}; "
                "give the corpus more text (or raise data.sample_bytes / data.val_tokens) or shorten data.seq_len"
            )
    return cache
