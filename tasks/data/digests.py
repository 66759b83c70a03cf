"""Content digests of input files: the whole file's sha256, computed once per version of a file and
cached by its metadata (path, size, modification time, inode), so planning a large corpus a second
time reads none of it.

The cache is a JSON file ($SCALING_DIGEST_CACHE, else ~/.cache/scaling/digests.json). A lost update,
when two processes write it at once, only means a digest is computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tasks.atomic import write_atomic

_read: dict[str, str] = {}  # this process's view of the cache, key -> digest


def cache_file() -> Path:
    return Path(os.environ.get("SCALING_DIGEST_CACHE", Path.home() / ".cache" / "scaling" / "digests.json"))


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def _load() -> dict[str, str]:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def file_digest(path: Path) -> str:
    """sha256 of the file's whole content: one changed byte anywhere gives another digest."""
    key = _key(Path(path))
    if key in _read:
        return _read[key]
    cached = _load()
    if key not in cached:
        with open(path, "rb") as fh:
            cached[key] = hashlib.file_digest(fh, "sha256").hexdigest()
        try:
            write_atomic(cache_file(), json.dumps(cached))
        except OSError:  # a read-only home: the digest is still right, only not remembered
            pass
    _read.update(cached)
    return cached[key]
