import pytest
import torch

from kernels.fftconv import ENV_VAR, fftconv, fftconv_fast, fftconv_impl, fftconv_ref

# Both paths compute in fp32 and round once, so they differ by summation order only: the FFT's
# rounding grows like eps * log L relative to the output's scale (observed max errors at these
# sizes: 1e-6 on outputs, 9e-6 on dh, whose entries sum B x L products and reach ~10). In bf16 the
# inputs are exact in fp32 and each path rounds its fp32 result once (eps 2^-7 ~ 7.8e-3), so two
# results may sit one ulp apart: two ulps relative plus a floor.
TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2),
}

SHAPES = [  # (B, C, L): L = 1 is the skip alone; odd lengths make the 2L FFT size not a power of 2
    (2, 3, 1),
    (2, 3, 7),
    (1, 4, 33),
    (2, 5, 100),
]


def _assert_close(actual, expected, dtype, what):
    err = (actual.float() - expected.float()).abs()
    torch.testing.assert_close(
        actual,
        expected,
        **TOLERANCES[dtype],
        msg=lambda m: f"{what} ({dtype}): max abs error {err.max():.3e}, mean {err.mean():.3e}\n{m}",
    )


def _run(fn, u, h, D, grad_out):
    out = fn(u, h, D)
    return (out, *torch.autograd.grad(out, (u, h, D), grad_out))


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_matches_ref(shape, dtype):
    torch.manual_seed(0)
    B, C, L = shape
    u = torch.randn(B, C, L, dtype=dtype, requires_grad=True)
    # A decaying filter, as Hyena's modulated ones are, keeps outputs O(1) at every length.
    h = (torch.randn(C, L) * torch.exp(-torch.arange(L) / 10)).to(dtype).requires_grad_()
    D = torch.randn(C, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(B, C, L, dtype=dtype)
    fast = _run(fftconv_fast, u, h, D, grad_out)
    ref = _run(fftconv_ref, u, h, D, grad_out)
    assert fast[0].dtype == ref[0].dtype == dtype
    for what, a, b in zip(("output", "du", "dh", "dD"), fast, ref):
        _assert_close(a, b, dtype, what)


@pytest.mark.parametrize("fn", [fftconv_ref, fftconv_fast])
def test_is_causal_convolution(fn):
    # An impulse at s comes out as the filter shifted to start at s: nothing before s, and
    # nothing wraps around from the end of the sequence into its start.
    L, s = 9, 4
    h = torch.arange(1.0, L + 1)[None]  # (1, L)
    u = torch.zeros(1, 1, L)
    u[..., s] = 1.0
    y = fn(u, h, torch.zeros(1))
    expected = torch.cat((torch.zeros(s), h[0, : L - s]))
    torch.testing.assert_close(y[0, 0], expected)


@pytest.mark.parametrize("fn", [fftconv_ref, fftconv_fast])
def test_future_inputs_do_not_reach_the_past(fn):
    torch.manual_seed(0)
    u, h, D = torch.randn(2, 3, 16), torch.randn(3, 16), torch.randn(3)
    t = 6
    changed = u.clone()
    changed[..., t + 1 :] = torch.randn(2, 3, 16 - t - 1)
    before, after = fn(u, h, D), fn(changed, h, D)
    # Every FFT output sums over every input, so the fast path is causal up to fp32 rounding
    # (~1e-6 here); a leak from the O(1) change would be O(1).
    torch.testing.assert_close(after[..., : t + 1], before[..., : t + 1], atol=1e-5, rtol=0)
    assert not torch.allclose(after[..., t + 1 :], before[..., t + 1 :])


def test_dispatch_follows_environment(monkeypatch):
    u, h, D = torch.randn(2, 3, 9), torch.randn(3, 9), torch.randn(3)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert fftconv_impl() == "rfft"
    assert torch.equal(fftconv(u, h, D), fftconv_fast(u, h, D))
    monkeypatch.setenv(ENV_VAR, "ref")
    assert fftconv_impl() == "ref"
    assert torch.equal(fftconv(u, h, D), fftconv_ref(u, h, D))
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="valid: rfft, ref"):
        fftconv(u, h, D)
