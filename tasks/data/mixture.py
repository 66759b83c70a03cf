"""Which documents a text cache holds: the sets of data.subsets, each repeated by its data.mixture weight."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from tasks.config import DataConfig
from tasks.data.corpus import DataError


def weight(name: str, index: int, weight: float) -> int:
    """How many times the index-th document of set `name` goes into the train stream under `weight`
    epochs: the whole part always, the fraction by a hash of (name, index), so the same documents
    are chosen on every build and machine."""
    whole, frac = divmod(weight, 1.0)
    u = int.from_bytes(hashlib.blake2b(f"{name}/{index}".encode(), digest_size=8).digest(), "big") / 2**64
    return int(whole) + (u < frac)


def select(records: Iterable[tuple[str, str]], cfg: DataConfig, weigh: bool) -> Iterator[tuple[str, str]]:
    """The (text, set name) records of cfg's subsets, each repeated by its mixture weight if `weigh`."""
    keep = set(cfg.subsets) if cfg.subsets else None
    weights = cfg.mixture if weigh and cfg.mixture else {}
    seen: dict[str, int] = {}
    for text, name in records:
        if keep is not None and name not in keep:
            continue
        index = seen[name] = seen.get(name, -1) + 1
        for _ in range(weight(name, index, weights[name]) if name in weights else 1):
            yield text, name


def check_sets(cfg: DataConfig, seen: Iterable[str], corpus: Path) -> None:
    """A subset or mixture name that matched no document is a typo until shown otherwise."""
    seen = set(seen)
    for what, names in (("data.subsets", cfg.subsets or []), ("data.mixture", cfg.mixture or {})):
        if missing := sorted(set(names) - seen):
            raise DataError(
                f"{what}: no document of {', '.join(missing)} in {corpus} (sets there: {', '.join(sorted(seen))})"
            )
