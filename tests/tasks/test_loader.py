import numpy as np
import pytest
import torch

from tasks.loader import train_batch, val_batches


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
