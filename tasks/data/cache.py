"""The token cache: a corpus tokenized once into flat memory-mapped token streams.

`<data_root>/tokens-<key16>/` holds `train.bin` and `val.bin` (flat token ids, every document followed
by the end-of-document token; uint16 when the vocabulary fits, else uint32; uint8 for a genome),
`tokenizer.json` and, last, `manifest.json`. A folder without a valid manifest is never used. Text
caches are built by tasks.data.prepare, genome caches by tasks.data.genome_cache, both in this format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.data.corpus import DataError

FORMAT = 2
"""The folder format; bump it when the layout changes, so that caches built before are rebuilt."""


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
        cache = load_cache(Path(folder))
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


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def load_cache(folder: Path) -> TokenCache | None:
    """The cache in `folder` if its manifest is there and matches the files; else None (to be rebuilt)."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
        n = m["tokens"]
        cache = TokenCache(folder, m["vocab_size"], m["dtype"], n["train"], n["val"], m["key"], m["eot_id"])
        itemsize = np.dtype(cache.dtype).itemsize
        sizes_ok = all((folder / f"{split}.bin").stat().st_size == n[split] * itemsize for split in ("train", "val"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cache if m.get("format") == FORMAT and sizes_ok and cache.tokenizer_path.is_file() else None
