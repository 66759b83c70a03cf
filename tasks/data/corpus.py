"""Corpora on disk, read and written as documents (strings); tokens are tasks.data's job.

Three sources:
- the Pile layout: train shards `NN.jsonl.zst` (in the folder or in its `train/`, the layout the Pile ships in)
  and `val.jsonl.zst`, one JSON record `{"text": ..., "meta": ...}` per line;
- a folder of `.txt` (one file, one document), `.jsonl` and `.jsonl.zst` files, read in sorted path order;
- the sample corpus, in the Pile layout (built by tasks.data.sample_corpus).

Every read error names the file and line: a bad record in a 15 GB shard is otherwise unfindable.
Documents come with their set name (the Pile's `meta.pile_set_name`), by which a sweep selects
and weights them. A bad record stops the read (`on_bad_record: error`, the default) or is
skipped and counted by cause for the cache's manifest (`skip`), through a `Skips`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import zstandard

Split = Literal["train", "val"]

TEXT_SUFFIXES = (".txt", ".jsonl", ".jsonl.zst")

_SHARD = re.compile(r"^(\d+)\.jsonl\.zst$")
_CHUNK = 1 << 20


UNLABELLED = "unlabelled"
"""The set name of a document without `meta.pile_set_name` (a plain .txt file, say)."""
_EXAMPLES = 5


class DataError(ValueError):
    """A corpus, tokenizer or token cache that cannot be used; the message names the path and the fix."""


class CorruptFile(DataError):
    """A compressed file that cannot be read past some point."""


@dataclass
class Skips:
    """Bad records met while reading: the first stops the read (policy "error"), or each is counted
    by cause, with the first few places, for the manifest (policy "skip")."""

    policy: Literal["error", "skip"] = "error"
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def bad(self, cause: str, where: str, detail: str) -> None:
        if self.policy == "error":
            raise DataError(f"{where}: {detail}")
        self.counts[cause] += 1
        seen = self.examples.setdefault(cause, [])
        if len(seen) < _EXAMPLES:
            seen.append(f"{where}: {detail}")

    def to_dict(self) -> dict:
        return {"policy": self.policy, "counts": dict(sorted(self.counts.items())), "examples": self.examples}


# ---------------------------------------------------------------- reading


def _zst_chunks(path: Path) -> Iterator[bytes]:
    # stream_reader hands back a truncated frame's bytes without any error (reliability.md 5.3), so each
    # frame gets its own decompressobj, and the file must end where a frame ends.
    dctx = zstandard.ZstdDecompressor()
    frame = None
    with open(path, "rb") as fh:
        while data := fh.read(_CHUNK):
            while data:
                if frame is None:
                    frame = dctx.decompressobj()
                if out := frame.decompress(data):
                    yield out
                data, frame = (frame.unused_data, None) if frame.eof else (b"", frame)
    if frame is not None:
        raise zstandard.ZstdError("truncated: the file ends inside a zstd frame")


def _plain_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while data := fh.read(_CHUNK):
            yield data


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a .jsonl or .jsonl.zst file, without holding more than one line."""
    chunks = _zst_chunks(path) if path.name.endswith(".zst") else _plain_chunks(path)
    lineno = 0
    pending: list[bytes] = []  # a line spread over chunks; joined once, not re-concatenated per chunk
    try:
        for chunk in chunks:
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                pending.append(chunk[start:end])
                lineno += 1
                yield lineno, b"".join(pending)
                pending.clear()
                start = end + 1
            pending.append(chunk[start:])
    except zstandard.ZstdError as e:
        raise CorruptFile(f"{path}: corrupt or truncated zstd data after line {lineno}: {e}") from None
    if tail := b"".join(pending):
        yield lineno + 1, tail


def _jsonl_records(path: Path, skips: Skips) -> Iterator[tuple[str, str]]:
    """(text, set name) of each good line; a corrupt file's good lines before the damage count."""
    records = 0
    try:
        for lineno, line in _lines(path):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                skips.bad("invalid_utf8", where, f"not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            except ValueError as e:
                skips.bad("not_json", where, f"not a JSON record ({e})")
                continue
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                skips.bad("no_text", where, 'the record has no "text" string')
                continue
            meta = record.get("meta")
            name = meta.get("pile_set_name") if isinstance(meta, dict) else None
            records += 1
            yield record["text"], name if isinstance(name, str) else UNLABELLED
    except CorruptFile as e:
        skips.bad("corrupt_file", str(path), str(e).removeprefix(f"{path}: "))
    if records == 0 and path.stat().st_size == 0:
        skips.bad("empty_file", str(path), "an empty file (no records)")


def pile_files(path: Path) -> tuple[list[Path], Path | None]:
    """The train shards (numeric order) and val.jsonl.zst (None if absent) of a Pile-layout folder."""
    shards: list[Path] = []
    for folder in (path, path / "train"):
        if folder.is_dir():
            named = ((int(m[1]), p) for p in folder.iterdir() if (m := _SHARD.match(p.name)))
            shards = [p for _, p in sorted(named)]
        if shards:
            break
    val = path / "val.jsonl.zst"
    return shards, val if val.is_file() else None


def iter_documents(path: Path, split: Split, skips: Skips | None = None) -> Iterator[str]:
    """The documents of one split of a Pile-layout folder, streamed shard by shard."""
    return (text for text, _ in iter_records(path, split, skips))


def iter_records(path: Path, split: Split, skips: Skips | None = None) -> Iterator[tuple[str, str]]:
    """(text, set name) of every document of one split of a Pile-layout folder, shard by shard."""
    skips = skips or Skips()
    shards, val = pile_files(Path(path))
    if split == "val":
        if val is None:
            raise DataError(f"{path}: no val.jsonl.zst")
        files = [val]
    else:
        if not shards:
            raise DataError(f"{path}: no train shards (NN.jsonl.zst, e.g. 00.jsonl.zst)")
        files = shards
    for f in files:
        yield from _jsonl_records(f, skips)


def text_files(path: Path) -> list[Path]:
    """The .txt / .jsonl / .jsonl.zst files under a folder, hidden ones skipped, sorted by relative path."""
    found = []
    for p in Path(path).rglob("*"):
        rel = p.relative_to(path)
        if p.name.endswith(TEXT_SUFFIXES) and p.is_file() and not any(part.startswith(".") for part in rel.parts):
            found.append((rel.as_posix(), p))
    return [p for _, p in sorted(found)]


def iter_text_documents(path: Path, skips: Skips | None = None) -> Iterator[str]:
    """Every document of a text folder: a .txt file is one document, a .jsonl line is one record."""
    return (text for text, _ in iter_text_records(path, skips))


def iter_text_records(path: Path, skips: Skips | None = None) -> Iterator[tuple[str, str]]:
    """(text, set name) of every document of a text folder; a .txt file's set name is UNLABELLED."""
    skips = skips or Skips()
    for f in text_files(path):
        if not f.name.endswith(".txt"):
            yield from _jsonl_records(f, skips)
            continue
        data = f.read_bytes()
        if not data:
            skips.bad("empty_file", str(f), "an empty file (no text)")
            continue
        try:
            yield data.decode("utf-8"), UNLABELLED
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            skips.bad("invalid_utf8", f"{f}, line {line}", f"not UTF-8 text ({e.reason} at byte {e.start})")
