"""The sample corpus: the Python standard library's own source in the Pile layout, which every
machine with Python has, so the pipeline runs end to end with no download."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sysconfig
from pathlib import Path

import zstandard

from tasks.atomic import build_dir, replace_dir, write_atomic
from tasks.data.corpus import DataError

SAMPLE_SET_NAME = "python-stdlib"
SAMPLE_MARKER = "corpus.json"
_SAMPLE_SHARDS = 4
_VAL_FRACTION = 0.05


def _stdlib_sources(max_bytes: int) -> list[tuple[str, bytes]]:
    """The stdlib's UTF-8 .py files in sorted relative path order, each taken if it still fits in max_bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*.py")
        # Third-party packages differ between machines; the corpus must not.
        if p.relative_to(root).parts[0] not in ("site-packages", "dist-packages")
    )
    docs, total = [], 0
    for rel, p in paths:
        if total + p.stat().st_size > max_bytes:
            continue
        data = p.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:  # a few test files carry other encodings on purpose
            continue
        if data.strip():
            docs.append((rel, data))
            total += len(data)
    return docs


def _pick_val(docs: list[tuple[str, bytes]]) -> set[str]:
    """About 5% of the bytes, by document, in order of the path's sha256.

    A byte share rather than a hash threshold keeps a small corpus from getting no validation document,
    and the 2x cap keeps one large file from taking most of it.
    """
    total = sum(len(d) for _, d in docs)
    target, cap = total * _VAL_FRACTION, 2 * total * _VAL_FRACTION
    by_hash = sorted(docs, key=lambda d: hashlib.sha256(d[0].encode()).digest())
    val, size = set(), 0
    for rel, data in by_hash:
        if size >= target:
            break
        if size + len(data) <= cap:
            val.add(rel)
            size += len(data)
    return val or {min(by_hash, key=lambda d: len(d[1]))[0]}


def sample_params(max_bytes: int) -> dict:
    """What the sample corpus is a function of: its format, this Python (its stdlib is the text) and the size."""
    return {"format": 1, "source": SAMPLE_SET_NAME, "python": platform.python_version(), "max_bytes": max_bytes}


def _is_sample(path: Path, params: dict) -> bool:
    try:
        marker = json.loads((path / SAMPLE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all(marker.get(k) == v for k, v in params.items())


def check_sample_dir(path: Path) -> None:
    """The sample corpus is built into `path`; refuse a folder that holds something else."""
    if path.is_dir() and not (path / SAMPLE_MARKER).is_file() and any(path.iterdir()):
        raise DataError(
            f"{path.absolute()} exists and is not a sample corpus (no {SAMPLE_MARKER}); "
            "empty it or point data.path at another folder"
        )


def _write_shard(path: Path, docs: list[tuple[str, bytes]]) -> None:
    lines = [
        json.dumps(
            {"text": data.decode("utf-8"), "meta": {"pile_set_name": SAMPLE_SET_NAME, "path": rel}},
            ensure_ascii=False,
        ).encode("utf-8")
        + b"\n"
        for rel, data in docs
    ]
    # One thread and a fixed level: the same input gives the same bytes, which the cache key relies on.
    cctx = zstandard.ZstdCompressor(level=10, write_checksum=True, threads=0)
    with open(path, "wb") as fh:
        fh.write(cctx.compress(b"".join(lines)))
        fh.flush()
        os.fsync(fh.fileno())


def build_sample_corpus(out_dir: Path, max_bytes: int) -> Path:
    """A Pile-layout corpus of the Python standard library's source (up to max_bytes), built once.

    Documents are whole .py files (test packages included, site-packages excluded), taken in sorted path
    order while they fit in max_bytes; past the library's size (~30 MB on 3.11) it is all used. Train shards
    00..03.jsonl.zst split the train documents by bytes; ~5% go to val.jsonl.zst. The bytes are the same on
    every run with the same Python. The folder is built beside out_dir under a dot-name and renamed into
    place; a finished folder (marker file with the same Python and max_bytes) is reused.
    """
    out_dir = Path(out_dir)
    params = sample_params(max_bytes)
    if _is_sample(out_dir, params):
        return out_dir
    check_sample_dir(out_dir)
    docs = _stdlib_sources(max_bytes)
    if len(docs) < 2:
        raise DataError(f"data.sample_bytes={max_bytes} holds fewer than 2 standard library files; raise it")
    val = _pick_val(docs)
    train = [d for d in docs if d[0] not in val]
    train_bytes = sum(len(d) for _, d in train)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = build_dir(out_dir)
    try:
        shards: list[list[tuple[str, bytes]]] = [[]]
        size = 0
        for doc in train:
            if size >= train_bytes / _SAMPLE_SHARDS * len(shards):
                shards.append([])
            shards[-1].append(doc)
            size += len(doc[1])
        names = [f"{i:02d}.jsonl.zst" for i in range(len(shards))]
        for name, shard in zip(names, shards):
            _write_shard(tmp / name, shard)
        _write_shard(tmp / "val.jsonl.zst", [d for d in docs if d[0] in val])
        marker = params | {
            "shards": names,
            "bytes": {"train": train_bytes, "val": sum(len(d) for r, d in docs if r in val)},
            "documents": {"train": len(train), "val": len(val)},
        }
        write_atomic(tmp / SAMPLE_MARKER, json.dumps(marker, indent=1).encode())
        replace_dir(tmp, out_dir, lambda d: _is_sample(d, params))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
