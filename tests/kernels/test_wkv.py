import math

import pytest
import torch

from kernels.wkv import CHUNK, ENV_VAR, wkv, wkv_fast, wkv_impl, wkv_ref

# Both paths compute in fp32 and round once; they differ by rounding order. The reference
# rescales at every step, so its error grows with T and with |k| (exponents near 30 carry an
# ulp of 2e-6): against a float64 loop, fast stays near 3e-7 and ref reaches ~1e-5. dw and du
# are sums over B * T terms and inherit the rounding of the largest term, so every tensor is
# compared relative to its largest magnitude, floored at 1 for a tensor that is all ~0 (dw at
# T = 1, where nothing decays): atol = tol * max(max|ref|, 1), rtol = tol. In bf16 both round
# the same fp32 result (eps 2^-7 ~ 7.8e-3): two ulps.
TOLERANCES = {torch.float32: 5e-5, torch.bfloat16: 1.6e-2}

LENGTHS = [1, 7, CHUNK, CHUNK + 1, 3 * CHUNK - 1]  # odd lengths and chunk boundaries


def rwkv_like(B, T, C, dtype, k_offset=0.0, seed=0):
    """w, u, k, v in the ranges of RWKV-4's initialisation (time_decay in [-5, 3])."""
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(-5 + 8 * torch.rand(C, generator=g))
    u = math.log(0.3) + 0.5 * torch.randn(C, generator=g)
    k = torch.randn(B, T, C, generator=g) + k_offset
    v = torch.randn(B, T, C, generator=g)
    return tuple(x.to(dtype).requires_grad_() for x in (w, u, k, v))


def _assert_close(actual, expected, dtype, what):
    err = (actual.float() - expected.float()).abs()
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual,
        expected,
        atol=tol * max(expected.abs().max().item(), 1.0),
        rtol=tol,
        msg=lambda m: f"{what} ({dtype}): max abs error {err.max():.3e}, mean {err.mean():.3e}\n{m}",
    )


def _run(fn, inputs, grad_out):
    y = fn(*inputs)
    # materialize: at T = 1 nothing decays, so w gets no gradient from the reference's graph.
    return (y, *torch.autograd.grad(y, inputs, grad_out, materialize_grads=True))


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("T", LENGTHS)
def test_fast_matches_ref(T, dtype):
    inputs = rwkv_like(2, T, 24, dtype)
    grad_out = torch.randn(2, T, 24, generator=torch.Generator().manual_seed(1)).to(dtype)
    fast, ref = _run(wkv_fast, inputs, grad_out), _run(wkv_ref, inputs, grad_out)
    assert fast[0].dtype == ref[0].dtype == dtype
    for what, a, b in zip(("output", "dw", "du", "dk", "dv"), fast, ref):
        _assert_close(a, b, dtype, what)


@pytest.mark.parametrize("k_offset", [30.0, -30.0])
def test_large_keys_neither_overflow_nor_underflow(k_offset):
    # e^k would overflow fp16 at k = 30 and underflow it at k = -30; both paths divide by a
    # maximum of k (running in ref, per chunk in fast). y ignores a common shift of all k, so
    # the results must be those at k near 0.
    T = 2 * CHUNK + 3
    shifted, base = rwkv_like(2, T, 16, torch.float32, k_offset), rwkv_like(2, T, 16, torch.float32)
    grad_out = torch.randn(2, T, 16)
    expected = _run(wkv_ref, base, grad_out)
    for fn in (wkv_ref, wkv_fast):
        out = _run(fn, shifted, grad_out)
        assert all(x.isfinite().all() for x in out)
        for what, a, b in zip(("output", "dw", "du", "dk", "dv"), out, expected):
            _assert_close(a, b, torch.float32, f"{fn.__name__} {what}")


def test_ref_matches_the_formula():
    # y_t as the two sums of the module docstring, term by term, in float64.
    T = 5
    w, u, k, v = (x.detach() for x in rwkv_like(1, T, 3, torch.float32))
    w64, u64, k64, v64 = w.double(), u.double(), k[0].double(), v[0].double()
    expected = []
    for t in range(T):
        weights = [torch.exp((t - 1 - i) * w64 + k64[i]) for i in range(t)] + [torch.exp(u64 + k64[t])]
        expected.append(sum(weight * v64[i] for i, weight in enumerate(weights)) / sum(weights))
    torch.testing.assert_close(wkv_ref(w, u, k, v)[0], torch.stack(expected).float())


def test_dispatch_follows_environment(monkeypatch):
    inputs = [x.detach() for x in rwkv_like(1, 9, 8, torch.float32)]
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert wkv_impl() == "chunked"
    assert torch.equal(wkv(*inputs), wkv_fast(*inputs))
    monkeypatch.setenv(ENV_VAR, "ref")
    assert wkv_impl() == "ref"
    assert torch.equal(wkv(*inputs), wkv_ref(*inputs))
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="valid: chunked, ref"):
        wkv(*inputs)


def test_fast_refuses_a_second_backward():
    # Its backward reuses saved buffers for the gradients; autograd must say so, not return garbage.
    w, u, k, v = rwkv_like(1, CHUNK, 8, torch.float32)
    y = wkv_fast(w, u, k, v).sum()
    y.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
