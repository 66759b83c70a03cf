"""What the selective-scan tests share: inputs in a Mamba layer's ranges, one call of a path with
its gradients, and the tolerances every path is held to against the reference."""

import torch

from kernels.selective_scan import TOLERANCES

# Every path is held to the reference within kernels.selective_scan.ref's TOLERANCES, relative to each tensor's
# largest magnitude (floored at 1 for tensors near 0); up to L = 3 * CHUNK - 1 for the chunked path's chunks.

NAMES = ("output", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")
OPTIONS = ("D", "z", "delta_bias", "delta_softplus")


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


def run_scan(fn, inputs, grad_out, use):
    """Output and the gradients of all eight inputs (zeros for an option switched off)."""
    u, delta, A, B, C, D, z, delta_bias = inputs
    out = fn(
        u,
        delta,
        A,
        B,
        C,
        D=D if use["D"] else None,
        z=z if use["z"] else None,
        delta_bias=delta_bias if use["delta_bias"] else None,
        delta_softplus=use["delta_softplus"],
    )
    return (out, *torch.autograd.grad(out, inputs, grad_out, allow_unused=True, materialize_grads=True))


def assert_close(actual, expected, dtype, what):
    err = (actual.float() - expected.float()).abs()
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual,
        expected,
        atol=tol * max(expected.abs().max().item(), 1.0),
        rtol=tol,
        msg=lambda m: f"{what} ({dtype}): max abs error {err.max():.3e}, mean {err.mean():.3e}\n{m}",
    )
