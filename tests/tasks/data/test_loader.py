import numpy as np
import pytest
import torch

from tasks.data.loader import (
    INTERVALS_FILE,
    read_intervals,
    train_batch,
    val_batches,
    val_windows,
    window_batch,
    window_counts,
)


@pytest.fixture
def tokens():
    return np.random.default_rng(0).integers(0, 257, 20_000).astype(np.uint16)


def test_train_batch_is_a_function_of_seed_and_step(tokens):
    x, y = train_batch(tokens, step=7, rank=0, world_size=1, batch_per_rank=8, seq_len=64, seed=3)
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        start = np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(tokens, 64) == row_x, axis=1))[0]
        assert np.array_equal(row_y, tokens[start + 1 : start + 65])

    again = train_batch(tokens, step=7, rank=0, world_size=1, batch_per_rank=8, seq_len=64, seed=3)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(train_batch(tokens, 8, 0, 1, 8, 64, 3)[0], x)
    assert not torch.equal(train_batch(tokens, 7, 0, 1, 8, 64, 4)[0], x)

    ranks = [train_batch(tokens, 7, r, 4, 2, 64, 3) for r in range(4)]
    assert torch.equal(torch.cat([r[0] for r in ranks]), x) and torch.equal(torch.cat([r[1] for r in ranks]), y)


def test_val_batches_are_fixed_contiguous_windows(tokens):
    val = tokens[:5000]
    batches = list(val_batches(val, seq_len=64, batch_size=5, max_tokens=1000))
    assert [len(x) for x, _ in batches] == [5, 5, 5]
    x = torch.cat([b[0] for b in batches]).flatten().numpy()
    y = torch.cat([b[1] for b in batches]).flatten().numpy()
    assert np.array_equal(x, val[: 15 * 64]) and np.array_equal(y, val[1 : 15 * 64 + 1])
    assert len(list(val_batches(val, 64, 100, 10**9))) == 1
    with pytest.raises(ValueError, match="no validation window"):
        val_batches(val, 64, 5, 10)


# ---------------------------------------------------------------- windows inside intervals


@pytest.fixture
def spans():
    # Token offsets of five intervals in a stream of 1000; the gaps hold tokens no window may touch.
    return np.array([[0, 130], [130, 200], [210, 215], [300, 641], [700, 1000]], dtype=np.int64)


def _starts(x: torch.Tensor) -> np.ndarray:
    """Window starts, read off tokens that are their own positions (tokens = arange)."""
    return x[:, 0].numpy()


def test_window_counts_cut_each_interval_into_whole_windows(spans):
    # (length - 1) // seq_len: windows of seq_len + 1 tokens, consecutive ones sharing a token
    assert window_counts(spans, 32).tolist() == [4, 2, 0, 10, 9]
    assert window_counts(spans, 1000).sum() == 0


def test_window_batch_stays_inside_intervals_and_covers_each_window_once_per_epoch(spans):
    tokens, seq_len, batch = np.arange(1000), 32, 5
    n = int(window_counts(spans, seq_len).sum())  # 25 windows: 5 steps of 5
    starts = []
    for step in range(2 * n // batch):
        x, y = window_batch(tokens, spans, step, rank=0, world_size=1, batch_per_rank=batch, seq_len=seq_len, seed=1)
        assert x.shape == y.shape == (batch, seq_len) and torch.equal(x[:, 1:], y[:, :-1])
        assert torch.equal(y[:, -1], x[:, 0] + seq_len)  # contiguous: the windows are slices of the stream
        starts += _starts(x).tolist()
    for s in starts:
        inside = (spans[:, 0] <= s) & (s + seq_len + 1 <= spans[:, 1])
        assert inside.sum() == 1, f"window at {s} leaves its interval"
        iv = spans[np.flatnonzero(inside)[0]]
        assert (s - iv[0]) % seq_len == 0, "windows are cut at fixed offsets, so they never overlap"
    first, second = starts[:n], starts[n:]
    assert len(set(first)) == n and set(first) == set(second), "each epoch visits every window once"
    assert first != second, "each epoch has its own order"


def test_window_batch_depends_on_seed_and_step_alone_and_splits_ranks_disjointly(spans):
    tokens, n = np.arange(1000), 25

    def batch(step, rank=0, world=1, per_rank=8, seed=3):
        return window_batch(tokens, spans, step, rank, world, per_rank, seq_len=32, seed=seed)

    x, y = batch(4)  # positions 32..39 of the order, all in the second epoch (25..49)
    again = batch(4)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert not torch.equal(batch(5)[0], x) and not torch.equal(batch(4, seed=4)[0], x)
    ranks = [batch(4, rank=r, world=4, per_rank=2) for r in range(4)]
    assert torch.equal(torch.cat([r[0] for r in ranks]), x), "the global batch does not depend on the split"
    assert len(set(np.concatenate([_starts(r[0]) for r in ranks]))) == 8, "ranks take disjoint windows"
    epoch0, epoch1 = (_starts(batch(e, per_rank=n)[0]).tolist() for e in (0, 1))
    assert _starts(batch(3)[0]).tolist() == epoch0[24:] + epoch1[:7], "positions 24..31 run into the next epoch"
    with pytest.raises(ValueError, match="no interval holds a window"):
        window_batch(tokens, spans, 0, 0, 1, 2, seq_len=500, seed=0)
    with pytest.raises(ValueError, match="outside world_size"):
        batch(0, rank=2, world=2)


def test_val_windows_are_fixed_spread_and_inside_intervals(spans):
    tokens = np.arange(1000)
    batches = list(val_windows(tokens, spans, seq_len=32, batch_size=4, max_tokens=10 * 32))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    starts = np.concatenate([_starts(x) for x, _ in batches])
    assert list(starts) == sorted(starts) and len(set(starts)) == 10
    assert starts[0] == 0 and starts[-1] > 700, "spread over all intervals, not the first few"
    for s in starts:
        assert ((spans[:, 0] <= s) & (s + 33 <= spans[:, 1])).any()
    again = np.concatenate([_starts(x) for x, _ in val_windows(tokens, spans, 32, 3, 10 * 32)])
    assert np.array_equal(starts, again)
    everything = np.concatenate([_starts(x) for x, _ in val_windows(tokens, spans, 32, 100, 10**9)])
    assert len(everything) == 25
    with pytest.raises(ValueError, match="no validation window"):
        val_windows(tokens, spans, 32, 4, max_tokens=31)


def test_read_intervals_is_none_without_an_index(tmp_path, spans):
    assert read_intervals(tmp_path, "train") is None
    np.save(tmp_path / INTERVALS_FILE.format(split="train"), spans)
    assert np.array_equal(read_intervals(tmp_path, "train"), spans)
