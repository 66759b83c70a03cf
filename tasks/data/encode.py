"""Documents to a flat token file, tokenized by a pool of worker processes, written in reading order.

The reading process decompresses, parses and filters (cheap, one core); tokenizing is the cost,
so batches of documents go to `workers` processes and their token arrays come back to be
written in the order they were read: the same file for any number of workers. At most
2 x workers batches are in flight, so memory stays bounded by the batch size (a few MB of text
each), whatever the corpus size.

Workers are spawned, not forked: a forked copy of a process whose tokenizer already ran its
thread pool can deadlock (HF tokenizers then disables its parallelism, with a warning). A
spawned worker imports the caller's main module before it starts, which is cheap for the
`scaling` command (its module imports only the standard library at the top) and the Prefect
engine. Each worker keeps its tokenizer to one thread, so N workers use N cores.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

BATCH_CHARS = 1 << 18
"""Characters of text per batch: big enough that a batch's tokenizing dwarfs its pickling, small
enough that its encodings (HF keeps strings and offsets per token: ~100 bytes a token) stay
within tens of MB per worker."""
BATCH_DOCS = 1024


@dataclass
class Written:
    """What `write_tokens` wrote: tokens and documents in all, and both per set name."""

    tokens: int = 0
    documents: int = 0
    set_tokens: Counter = field(default_factory=Counter)
    set_documents: Counter = field(default_factory=Counter)


_worker_tok: Tokenizer | None = None


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read at each call: this worker tokenizes on one thread
    _worker_tok = Tokenizer.from_str(tokenizer_json)


def encode_batch(tok: Tokenizer, texts: list[str], eot: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The batch's token ids, each document followed by `eot`, as one array; and each document's length."""
    ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    sizes = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    flat = np.full(int(sizes.sum()), eot, dtype=dtype)
    starts = np.cumsum(sizes) - sizes
    for x, start in zip(ids, starts):
        flat[start : start + len(x)] = x
    return flat, sizes


def _encode_in_worker(texts: list[str], eot: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    return encode_batch(_worker_tok, texts, eot, dtype)


def _batches(docs: Iterable[tuple[str, str]]) -> Iterator[tuple[list[str], list[str]]]:
    """(texts, set names) in batches of about BATCH_CHARS characters; empty documents dropped."""
    texts: list[str] = []
    names: list[str] = []
    size = 0
    for text, name in docs:
        if not text:
            continue
        texts.append(text)
        names.append(name)
        size += len(text)
        if size >= BATCH_CHARS or len(texts) >= BATCH_DOCS:
            yield texts, names
            texts, names, size = [], [], 0
    if texts:
        yield texts, names


def _encoded(tok: Tokenizer, docs: Iterable[tuple[str, str]], eot: int, dtype: str, workers: int):
    """(ids, sizes, set names) per batch, in reading order."""
    if workers <= 1:
        for texts, names in _batches(docs):
            yield *encode_batch(tok, texts, eot, dtype), names
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(tok.to_str(),)) as pool:
        pending: deque[tuple[Future, list[str]]] = deque()
        for texts, names in _batches(docs):
            pending.append((pool.submit(_encode_in_worker, texts, eot, dtype), names))
            if len(pending) >= 2 * workers:
                future, done_names = pending.popleft()
                yield *future.result(), done_names
        while pending:
            future, done_names = pending.popleft()
            yield *future.result(), done_names


def write_tokens(
    tok: Tokenizer,
    docs: Iterable[tuple[str, str]],
    path: Path,
    dtype: str,
    eot: int,
    workers: int,
    limit: int | None = None,
) -> Written:
    """Tokenize (text, set name) documents to a flat file at `path`, each followed by `eot`; stop
    after `limit` tokens (the last document cut short)."""
    out = Written()
    with open(path, "wb") as fh:
        for ids, sizes, names in _encoded(tok, docs, eot, dtype, workers):
            if limit is not None and out.tokens + len(ids) >= limit:
                keep = limit - out.tokens
                starts = np.cumsum(sizes) - sizes
                n = int(np.searchsorted(starts, keep))  # the documents with a token before the limit
                ids, sizes, names = ids[:keep], sizes[:n].copy(), names[:n]
                sizes[-1] -= int(sizes.sum()) - keep
            fh.write(ids.tobytes())
            out.tokens += len(ids)
            out.documents += len(sizes)
            for name, size in zip(names, sizes.tolist()):
                out.set_tokens[name] += size
                out.set_documents[name] += 1
            if limit is not None and out.tokens >= limit:
                break
    return out
