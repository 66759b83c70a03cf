import importlib.util
import itertools
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import selective_scan as scan_module
from kernels.selective_scan import (
    CHUNK,
    ENV_VAR,
    selective_scan,
    selective_scan_chunked,
    selective_scan_impl,
    selective_scan_ref,
    selective_scan_triton,
)

ROOT = Path(__file__).resolve().parents[2]

# Every path computes in fp32 and rounds once to u's dtype. In fp32 the paths differ by
# summation order (a matmul readout, a hand-written adjoint against autograd's): observed errors
# stay below 1.5e-6 of each tensor's largest magnitude up to L = 3 * CHUNK - 1 (the largest,
# ddelta_bias, sums over batch and time), so compare relative to that magnitude, floored at 1
# for tensors near 0: atol = tol * max(max|ref|, 1). In bf16 the rounded results differ by at
# most an ulp (2^-8 relative) where the fp32 ones straddle a rounding boundary: allow two.
TOLERANCES = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}

LENGTHS = [1, 7, CHUNK, CHUNK + 1, 3 * CHUNK - 1]  # odd lengths and chunk boundaries
NAMES = ("output", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")
OPTIONS = ("D", "z", "delta_bias", "delta_softplus")

requires_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def scan_inputs(L, dtype, b=2, d=6, n=5, seed=0):
    """u, delta, A, B, C, D, z, delta_bias in the ranges of mamba_ssm's own scan tests; the
    activations in `dtype`, the parameters A, D, delta_bias in fp32 as a Mamba layer keeps them.
    d and n are not powers of two, so the Triton kernel's masks are exercised."""
    g = torch.Generator().manual_seed(seed)
    u, z = torch.randn(2, b, d, L, generator=g)
    delta = 0.5 * torch.rand(b, d, L, generator=g)
    A = -0.5 * torch.rand(d, n, generator=g)
    B, C = torch.randn(2, b, n, L, generator=g)
    D = torch.randn(d, generator=g)
    delta_bias = 0.5 * torch.rand(d, generator=g)
    tensors = (u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype), D, z.to(dtype), delta_bias)
    return [x.requires_grad_() for x in tensors]


def _run(fn, inputs, grad_out, use):
    """Output and the gradients of all eight inputs (zeros for an option switched off)."""
    u, delta, A, B, C, D, z, delta_bias = inputs
    out = fn(u, delta, A, B, C, D=D if use["D"] else None, z=z if use["z"] else None,
             delta_bias=delta_bias if use["delta_bias"] else None, delta_softplus=use["delta_softplus"])  # fmt: skip
    return (out, *torch.autograd.grad(out, inputs, grad_out, allow_unused=True, materialize_grads=True))


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


def _compare(fn, L, dtype, use):
    inputs = scan_inputs(L, dtype)
    grad_out = torch.randn(2, 6, L, generator=torch.Generator().manual_seed(1)).to(dtype)
    fast, ref = _run(fn, inputs, grad_out, use), _run(selective_scan_ref, inputs, grad_out, use)
    assert fast[0].dtype == ref[0].dtype == dtype
    for what, a, b in zip(NAMES, fast, ref):
        _assert_close(a, b, dtype, what)


ALL_ON = dict.fromkeys(OPTIONS, True)


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("L", LENGTHS)
def test_chunked_matches_ref(L, dtype):
    _compare(selective_scan_chunked, L, dtype, ALL_ON)


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=len(OPTIONS))))
def test_chunked_matches_ref_with_and_without_options(flags):
    _compare(selective_scan_chunked, CHUNK + 1, torch.float32, dict(zip(OPTIONS, flags)))


@pytest.mark.parametrize("scale", [1e-4, 40.0])
def test_chunked_matches_ref_at_extreme_decays(scale):
    # delta + delta_bias up to 1e-4 (states that barely decay) or up to 40, so delta |A| reaches
    # 640 in one step (e^-640 underflows to 0: full resets), where a log-space scan overflows.
    inputs = scan_inputs(3 * CHUNK - 1, torch.float32, n=16)
    with torch.no_grad():
        inputs[1].mul_(scale)
        inputs[7].mul_(scale)
        inputs[2].copy_(-torch.arange(1.0, 17.0).expand(6, 16))
    grad_out = torch.randn(2, 6, 3 * CHUNK - 1, generator=torch.Generator().manual_seed(1))
    use = dict.fromkeys(OPTIONS, True) | {"delta_softplus": False}
    fast, ref = _run(selective_scan_chunked, inputs, grad_out, use), _run(selective_scan_ref, inputs, grad_out, use)
    for what, a, b in zip(NAMES, fast, ref):
        assert a.isfinite().all(), what
        _assert_close(a, b, torch.float32, what)


def test_ref_is_the_recurrence():
    # One channel, one state, no options: h_t = e^{delta A} h_{t-1} + delta B u_t, y_t = C h_t.
    u = torch.tensor([[[1.0, 2.0, 3.0]]])
    delta, A = torch.full((1, 1, 3), 0.5), torch.tensor([[-2.0]])
    B, C = torch.ones(1, 1, 3), torch.full((1, 1, 3), 2.0)
    decay = math.exp(0.5 * -2.0)
    h1 = 0.5 * 1.0
    h2 = decay * h1 + 0.5 * 2.0
    h3 = decay * h2 + 0.5 * 3.0
    torch.testing.assert_close(selective_scan_ref(u, delta, A, B, C), torch.tensor([[[2 * h1, 2 * h2, 2 * h3]]]))


def test_chunked_keeps_no_full_state_for_backward():
    # What autograd keeps for the backward: nine (b, d, L) tensors (u twice, delta, the softplus
    # input, z, the gate's two operands, the scan's time-major delta and delta * u), B and C
    # (b, n, L), one (b, d, n) state per chunk, and A, D, delta_bias: nothing of the (b, d, L, n)
    # size the reference keeps several of.
    b, d, L, n = 2, 32, 4 * CHUNK, 16
    inputs = scan_inputs(L, torch.float32, b=b, d=d, n=n)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        selective_scan_chunked(*inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=True)
    assert max(saved) == b * d * L
    assert sum(saved) <= 9 * b * d * L + 2 * b * n * L + (L // CHUNK) * b * d * n + d * n + 3 * d


def test_dispatch_follows_environment(monkeypatch, caplog):
    inputs = [x.detach() for x in scan_inputs(9, torch.float32)]
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(scan_module, "_announced", set())
    assert selective_scan_impl("cpu") == "chunked"
    with caplog.at_level(logging.INFO, logger="kernels.selective_scan"):
        assert torch.equal(selective_scan(*inputs), selective_scan_chunked(*inputs))
        selective_scan(*inputs)
    assert [r.getMessage() for r in caplog.records] == ["selective_scan: the chunked path on cpu"]
    monkeypatch.setenv(ENV_VAR, "ref")
    assert selective_scan_impl("cpu") == "ref"
    assert torch.equal(selective_scan(*inputs), selective_scan_ref(*inputs))
    monkeypatch.setenv(ENV_VAR, "mamba")
    with pytest.raises(ValueError, match="valid: ref, chunked, triton"):
        selective_scan(*inputs)


def test_cuda_without_triton_warns_once(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(scan_module, "triton", None)
    monkeypatch.setattr(scan_module, "_announced", set())
    assert selective_scan_impl("cuda") == "chunked"
    with pytest.warns(RuntimeWarning, match="pip install triton"):
        scan_module._announce(torch.device("cuda"), "chunked")
    scan_module._announce(torch.device("cuda"), "chunked")  # a second call stays quiet (-W error would fail here)
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="pip install triton"):
        selective_scan_impl("cuda")


@requires_triton
@pytest.mark.skipif(
    not INTERPRETED, reason="runs under TRITON_INTERPRET=1 in test_triton_under_interpreter's subprocess"
)
@pytest.mark.parametrize(
    "L,dtype,flags",
    [
        (1, torch.float32, (True, True, True, True)),
        (7, torch.float32, (False, False, False, False)),
        (CHUNK + 1, torch.float32, (True, True, True, True)),
        (CHUNK + 1, torch.float32, (True, False, True, False)),
        (7, torch.bfloat16, (True, True, True, True)),
    ],
)
def test_triton_matches_ref(L, dtype, flags):
    # Gradients too: they come from the chunked path's backward, which this checks is wired in.
    _compare(selective_scan_triton, L, dtype, dict(zip(OPTIONS, flags)))


@requires_triton
@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter run")
def test_triton_under_interpreter():
    # TRITON_INTERPRET must be set before triton defines the kernel (at import), and this
    # process may have imported it already, so the interpreted tests run in a fresh one.
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "test_triton_matches_ref"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"}, check=False,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\b5 passed", proc.stdout), proc.stdout[-2000:]
