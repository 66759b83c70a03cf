"""The selective scan as a Triton kernel: the fast path on GPUs.

Forward only. One program owns BLOCK_D channels of one sequence and all n states, keeps the
state h (BLOCK_D, BLOCK_N) in registers in fp32, and walks the L steps: load u, delta, z for
its channels and B, C for the step, discretise, update h, read out, store. The kernel fuses the
whole of `selective_scan_ref` (bias, softplus, skip, gate), so it reads the (b, d, L) inputs
once and never writes a state to memory. Consecutive steps of one channel share a cache line,
so the per-step loads mostly hit cache.

The backward recomputes through the chunked PyTorch path and differentiates that with its own
hand-written backward (`_TritonScan.backward`): correct on any device, but it launches about
2 L small kernels (a step of its two loops each), so on a GPU a training step pays for a slow
backward. A Triton
backward kernel (reverse scan over chunk-start states, as mamba_ssm's CUDA kernel does) is the
next step if GPU runs need it.

Under TRITON_INTERPRET=1, set before this module is imported (triton reads it when the kernel
is defined), the kernel runs on CPU tensors in Triton's interpreter: how the tests check it
without a GPU.
"""

from __future__ import annotations

import torch

from kernels.selective_scan.chunked import selective_scan_chunked

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

TRITON_INSTALL = "install it with `pip install triton` (a build matching your torch and CUDA)"
BLOCK_D = 32
"""Channels per program: with 16 states, the fp32 state is 512 values, 4 registers a thread at
Triton's default 4 warps, and batch * d_inner / 32 programs (384 at batch 8 and the paper's
smallest d_inner, 1536) fill a GPU. Not tuned: this machine has no GPU."""

if triton is not None:

    @triton.jit
    def _scan_forward_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
        d_inner, L, d_state,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        batch = tl.program_id(0)
        chan = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        state = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        chan_ok, state_ok = chan < d_inner, state < d_state
        # Padded lanes load A = 0 and B = C = 0, so their state stays 0 and adds nothing.
        A = tl.load(A_ptr + chan[:, None] * d_state + state[None, :],
                    mask=chan_ok[:, None] & state_ok[None, :], other=0.0).to(tl.float32)  # fmt: skip
        if HAS_D:
            D = tl.load(D_ptr + chan, mask=chan_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chan, mask=chan_ok, other=0.0).to(tl.float32)
        row = (batch * d_inner + chan) * L  # (BLOCK_D,) offsets of (b, d, L) rows
        col = (batch * d_state + state) * L  # (BLOCK_N,) offsets of (b, n, L) rows
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for t in range(L):
            u = tl.load(u_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                # torch's softplus threshold; the exp of the branch not taken may be inf, harmlessly.
                # log(1 + e^x) rounds to 0 below x ~ -17, where softplus is under 4e-8.
                dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
            B = tl.load(B_ptr + col + t, mask=state_ok, other=0.0).to(tl.float32)
            C = tl.load(C_ptr + col + t, mask=state_ok, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * B[None, :]
            y = tl.sum(h * C[None, :], axis=1)  # (BLOCK_D,)
            if HAS_D:
                y += D * u
            if HAS_Z:
                z = tl.load(z_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
                y *= z * tl.sigmoid(z)
            tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=chan_ok)


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    b, d, L = u.shape
    n = A.shape[1]
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    absent = u  # a valid pointer for inputs the constexpr flags switch off
    grid = (b, triton.cdiv(d, BLOCK_D))
    _scan_forward_kernel[grid](
        u.contiguous(), delta.contiguous(), A.float().contiguous(), B.contiguous(), C.contiguous(),
        absent if D is None else D.contiguous(), absent if z is None else z.contiguous(),
        absent if delta_bias is None else delta_bias.contiguous(), out,
        d, L, n,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        BLOCK_D=BLOCK_D, BLOCK_N=triton.next_power_of_2(n),
    )  # fmt: skip
    return out


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        return _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    @staticmethod
    def backward(ctx, grad_out):
        inputs = [None if x is None else x.detach().requires_grad_(needs)
                  for x, needs in zip(ctx.saved_tensors, ctx.needs_input_grad)]  # fmt: skip
        wanted = [x for x in inputs if x is not None and x.requires_grad]
        with torch.enable_grad():
            out = selective_scan_chunked(*inputs, delta_softplus=ctx.delta_softplus)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, materialize_grads=True))
        return (*(next(grads) if x is not None and x.requires_grad else None for x in inputs), None)


def selective_scan_triton(
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
    """`selective_scan_ref`'s result from one fused Triton kernel (fp32 inside); (b, d, L) in u's dtype.
    CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    if triton is None:
        raise RuntimeError(f"selective_scan_triton needs triton, which does not import; {TRITON_INSTALL}")
    return _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
