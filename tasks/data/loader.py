"""Batches from a token cache: training windows that depend on (seed, step) alone, so a resumed run
sees exactly the tokens it would have seen, and fixed validation windows shared by every run."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


def train_batch(
    tokens: np.ndarray, step: int, rank: int, world_size: int, batch_per_rank: int, seq_len: int, seed: int
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Rank `rank`'s share of step `step`'s batch: x and y = x shifted by one, each (batch_per_rank, seq_len).

    The step's global batch is world_size x batch_per_rank windows whose starts are drawn uniformly over the
    whole stream by a generator seeded with (seed, step) alone; rank r takes the r-th disjoint slice. A run
    resumed at step s therefore sees exactly the tokens it would have seen, with no loader state to save.
    Windows are drawn with replacement across steps: the Pile is far larger than any budget trained here, so
    an epoch-style permutation would buy nothing, and a small corpus is simply revisited.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be non-negative, got seed={seed}, step={step}")
    n_starts = len(tokens) - seq_len
    if n_starts < 1:
        raise ValueError(f"a stream of {len(tokens)} tokens holds no window of seq_len + 1 = {seq_len + 1} tokens")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, n_starts, size=world_size * batch_per_rank)
    mine = starts[rank * batch_per_rank : (rank + 1) * batch_per_rank]
    windows = np.stack([tokens[s : s + seq_len + 1] for s in mine]).astype(np.int64)
    x, y = np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
    return torch.from_numpy(x), torch.from_numpy(y)


def val_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_tokens: int
) -> Iterator[tuple[torch.LongTensor, torch.LongTensor]]:
    """Contiguous, non-overlapping windows from the start of the val stream, up to max_tokens, in batches.

    The same windows for every run and every eval, so validation losses compare across runs.
    """
    n_windows = min((len(tokens) - 1) // seq_len, max_tokens // seq_len)
    if n_windows < 1:
        raise ValueError(
            f"no validation window: {len(tokens)} tokens, max_tokens {max_tokens}, seq_len + 1 = {seq_len + 1}"
        )

    def batches():
        for first in range(0, n_windows, batch_size):
            k = min(batch_size, n_windows - first)
            span = np.asarray(tokens[first * seq_len : (first + k) * seq_len + 1]).astype(np.int64)
            yield torch.from_numpy(span[:-1].reshape(k, seq_len)), torch.from_numpy(span[1:].reshape(k, seq_len))

    return batches()


# ---------------------------------------------------------------- streams cut into intervals (hg38)

INTERVALS_FILE = "{split}.intervals.npy"
"""A cache split's interval index, beside its `.bin`: an (n, 2) int64 array of [start, end) token offsets."""


def read_intervals(folder: Path, split: str) -> np.ndarray | None:
    """The interval index of `split` ('train' or 'val') in a token cache folder; None for a cache without one."""
    path = Path(folder) / INTERVALS_FILE.format(split=split)
    return np.load(path) if path.is_file() else None


def window_counts(intervals: np.ndarray, seq_len: int) -> np.ndarray:
    """Windows of seq_len + 1 tokens per interval, consecutive ones sharing one token (the last target of one is
    the first input of the next), so every token but an interval's last is an input exactly once."""
    return np.maximum((intervals[:, 1] - intervals[:, 0] - 1) // seq_len, 0)


def _window_starts(intervals: np.ndarray, seq_len: int, ids: np.ndarray) -> np.ndarray:
    counts = window_counts(intervals, seq_len)
    ends = np.cumsum(counts)
    which = np.searchsorted(ends, ids, side="right")
    return intervals[which, 0] + (ids - (ends[which] - counts[which])) * seq_len


@lru_cache(maxsize=2)
def _epoch_order(n_windows: int, seed: int, epoch: int) -> np.ndarray:
    # Cached: HG38 at seq_len 1024 has ~4.4M windows, too many to permute again at every step; two entries
    # cover a batch that runs into the next epoch.
    order = np.random.default_rng([seed, epoch]).permutation(n_windows)
    order.flags.writeable = False
    return order


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    windows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    x, y = np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
    return torch.from_numpy(x), torch.from_numpy(y)


def window_batch(
    tokens: np.ndarray,
    intervals: np.ndarray,
    step: int,
    rank: int,
    world_size: int,
    batch_per_rank: int,
    seq_len: int,
    seed: int,
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Rank `rank`'s share of step `step`'s batch from a stream cut into intervals, as `train_batch` returns it.

    Each interval is cut into non-overlapping windows (`window_counts`), so none straddles two intervals. Epoch e
    visits all of them once in the order of a permutation seeded with (seed, e); the global batch of step s is
    positions [s*B, (s+1)*B) of the concatenated epochs, B = world_size x batch_per_rank, and rank r takes the
    r-th slice of it. A function of (seed, step) alone, like `train_batch`: a resumed run sees the same tokens.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be non-negative, got seed={seed}, step={step}")
    n = int(window_counts(intervals, seq_len).sum())
    if n < 1:
        raise ValueError(f"no interval holds a window of seq_len + 1 = {seq_len + 1} tokens")
    first = (step * world_size + rank) * batch_per_rank
    epochs, pos = np.divmod(np.arange(first, first + batch_per_rank, dtype=np.int64), n)
    ids = np.concatenate([_epoch_order(n, seed, int(e))[pos[epochs == e]] for e in np.unique(epochs)])
    return _windows(tokens, _window_starts(intervals, seq_len, ids), seq_len)


def val_windows(
    tokens: np.ndarray, intervals: np.ndarray, seq_len: int, batch_size: int, max_tokens: int
) -> Iterator[tuple[torch.LongTensor, torch.LongTensor]]:
    """Validation batches of windows inside the intervals: max_tokens / seq_len of them spread evenly over all
    (the first ones would cover only the first few intervals), in stream order, the same for every run."""
    n = int(window_counts(intervals, seq_len).sum())
    k = min(n, max_tokens // seq_len)
    if k < 1:
        raise ValueError(
            f"no validation window: {n} windows of seq_len + 1 = {seq_len + 1} tokens, max_tokens {max_tokens}"
        )
    starts = _window_starts(intervals, seq_len, np.arange(k, dtype=np.int64) * n // k)

    def batches():
        for i in range(0, k, batch_size):
            yield _windows(tokens, starts[i : i + batch_size], seq_len)

    return batches()
