import pytest
import torch

from kernels.attention import ENV_VAR, attention, attention_fast, attention_impl, attention_ref

# The reference computes in fp32 and rounds once. In fp32 the fused kernel differs only by
# summation order (observed max error ~2e-6). In bf16 the fused kernel's outputs and gradients
# are rounded to bf16 (eps 2^-7 ~ 7.8e-3), so allow two ulps relative plus a floor for values near 0.
TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2),
}

SHAPES = [  # (B, H, T, Dh): T=1 and odd lengths exercise the mask's edges and the kernels' tails
    (2, 3, 1, 16),
    (2, 3, 7, 16),
    (1, 2, 33, 32),
    (1, 2, 64, 96),
]


def _assert_close(actual, expected, dtype, what):
    err = (actual.float() - expected.float()).abs()
    torch.testing.assert_close(
        actual,
        expected,
        **TOLERANCES[dtype],
        msg=lambda m: f"{what} ({dtype}): max abs error {err.max():.3e}, mean {err.mean():.3e}\n{m}",
    )


def _run(fn, q, k, v, grad_out):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_matches_ref(shape, dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(shape, dtype=dtype)
    fast = _run(attention_fast, q, k, v, grad_out)
    ref = _run(attention_ref, q, k, v, grad_out)
    assert fast[0].dtype == ref[0].dtype == dtype
    for what, a, b in zip(("output", "dq", "dk", "dv"), fast, ref):
        _assert_close(a, b, dtype, what)


def test_ref_is_causal_softmax():
    # Position 0 sees only itself, so its output is v[0]; the last position averages v
    # uniformly when all scores are equal.
    T = 5
    q = torch.zeros(1, 1, T, 4)
    v = torch.randn(1, 1, T, 4)
    out = attention_ref(q, q, v)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0])
    torch.testing.assert_close(out[0, 0, -1], v[0, 0].mean(0))


def test_dispatch_follows_environment(monkeypatch):
    q, k, v = torch.randn(3, 1, 2, 9, 16).unbind(0)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert attention_impl() == "sdpa"
    assert torch.equal(attention(q, k, v), attention_fast(q, k, v))
    monkeypatch.setenv(ENV_VAR, "ref")
    assert attention_impl() == "ref"
    assert torch.equal(attention(q, k, v), attention_ref(q, k, v))
    monkeypatch.setenv(ENV_VAR, "flash")
    with pytest.raises(ValueError, match="valid: sdpa, ref"):
        attention(q, k, v)
