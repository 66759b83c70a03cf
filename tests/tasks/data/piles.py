"""Small Pile-format shards that the data tests write."""

import json
from pathlib import Path

import zstandard


def zst(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(b"".join(lines)))
    return path


def record(text: str, set_name: str = "test") -> bytes:
    return json.dumps({"text": text, "meta": {"pile_set_name": set_name}}).encode() + b"\n"
