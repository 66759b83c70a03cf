"""The selective scan step by step: the readable oracle the fast paths are held to.

Mamba's selective SSM (Gu & Dao 2023, §3.2 and Algorithm 2, https://arxiv.org/abs/2312.00752)
with the discretisation of mamba_ssm's `selective_scan_ref` (state-spaces/mamba:
mamba_ssm/ops/selective_scan_interface.py): per channel d and state n,

    delta = softplus(delta + delta_bias)         (each optional)
    h_t   = exp(delta_t A) h_{t-1} + delta_t B_t u_t      (zero-order hold for A, Euler for B)
    y_t   = sum_n C_t h_t  +  D u_t,   then  y_t * silu(z_t)      (D and z optional)

Shapes: b batch, d channels (the model's d_inner), L time, n states:
u, delta, z (b, d, L); A (d, n); B, C (b, n, L); D, delta_bias (d,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# How close every other path must come to this one, per tensor (the output and each gradient): its largest
# error within tol x max(max|ref|, 1). In fp32 the paths differ by summation order only (observed below
# 1.5e-6 of each tensor's largest magnitude); in bf16 the rounded results may differ by an ulp (2^-8) where
# the fp32 ones straddle a rounding boundary: two are allowed.
TOLERANCES = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}


def discretisation_step(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    """The step size delta in fp32, (b, d, L)."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if softplus else delta


def skip_and_gate(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """y + D u, gated by silu(z), in fp32 and returned in u's dtype, (b, d, L)."""
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """The recurrence one step at a time in fp32, differentiated by autograd; (b, d, L) in u's dtype.

    Unlike mamba_ssm's reference, the loop walks `unbind`-ed steps instead of indexing
    dA[:, :, t]: autograd turns each index into a full-size zero gradient, which makes the
    backward quadratic in L. Elementwise ops only, so autocast leaves it in fp32.
    """
    delta = discretisation_step(delta, delta_bias, delta_softplus)
    A, B, C = A.float(), B.float(), C.float()
    dA = torch.exp(delta[..., None] * A[:, None])  # (b, d, L, n)
    dBu = (delta * u.float())[..., None] * B.transpose(1, 2)[:, None]  # (b, d, L, n)
    h = dA.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (b, d, n)
    ys = []
    for dA_t, dBu_t, C_t in zip(dA.unbind(2), dBu.unbind(2), C.unbind(2)):
        h = dA_t * h + dBu_t
        ys.append((h * C_t[:, None]).sum(-1))  # (b, d)
    return skip_and_gate(torch.stack(ys, dim=-1), u, D, z)
