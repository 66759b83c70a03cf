"""Batches from a token cache: training windows that depend on (seed, step) alone, so a resumed run
sees exactly the tokens it would have seen, and fixed validation windows shared by every run."""

from __future__ import annotations

from collections.abc import Iterator

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
