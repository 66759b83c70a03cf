"""The selective scan as Triton kernels, forward and backward: the fast path on GPUs.

`selective_scan_triton` launches the kernels of `triton_kernels` (which describes them) inside
an autograd Function, with the signature and results of `selective_scan_ref`, and finishes
the backward's reductions, which are deterministic:
- over time, in registers: dA (d, n), dD, d(delta_bias) (d,) per program, to (b, d, .)
  partial buffers that a torch sum over the batch finishes;
- over channels, for dB and dC (b, n, L): each program sums its BLOCK_D channels and writes
  a (b, d / BLOCK_D, L, n) fp32 partial buffer, which a torch sum over the blocks finishes.
  `tl.atomic_add` into (b, n, L) would need less memory, but fp32 atomics add in whatever
  order the programs arrive, so two runs would give different dB and dC in the last bits and
  training runs would not reproduce. The partials are 2 n / BLOCK_D floats per (b, d, L)
  element (one fp32 (b, d, L) tensor at n = 16, BLOCK_D = 32), transient within the backward.
  The (L, n) order keeps each step's store one contiguous BLOCK_N-float run.

Memory, besides the (b, d, L) inputs and gradients: the saved chunk starts, b*d*n*L / CHUNK_T
floats; in the backward, the scratch, b * ceil(d / BLOCK_D) * CHUNK_T * BLOCK_D * BLOCK_N floats
(about b*d*n*CHUNK_T), and the dB, dC partials, 2 b*n*L * ceil(d / BLOCK_D). Nothing of size
(b, d, L, n) exists at any time. The first two trade against each other through CHUNK_T:
their sum b*d*n*(L / CHUNK_T + CHUNK_T) is least at CHUNK_T = sqrt(L), 64 at L = 4096.

Under TRITON_INTERPRET=1, set before this module (and so `triton_kernels`) is imported (triton
reads it when the kernels are defined), the kernels run on CPU tensors in Triton's interpreter:
how the tests check them without a GPU.
"""

from __future__ import annotations

import torch

try:
    import triton
except ImportError:
    triton = None
if triton is not None:
    from kernels.selective_scan.triton_kernels import scan_backward_kernel, scan_forward_kernel

TRITON_INSTALL = "install it with `pip install triton` (a build matching your torch and CUDA)"
BLOCK_D = 32
"""Channels per program: with 16 states, the fp32 state is 512 values, 4 registers a thread at
Triton's default 4 warps, and batch * d_inner / 32 programs (384 at batch 8 and the paper's
smallest d_inner, 1536) fill a GPU. The backward holds about seven such tiles (A, h_{t-1}, h,
the decay, lambda, its carry, dA): compiled for sm_90, ptxas gives it 168 registers a thread
(the forward 80) and no spills, so three programs fit an SM. Not tuned: this machine has no GPU."""
CHUNK_T = 64
"""Steps between saved states: the memory bound above is least at CHUNK_T = sqrt(L), and 64
sits between Mamba's usual L = 2048 (45) and 8192 (90). Not tuned on a GPU either."""
FP_FUSION = True
"""Let the compiler fuse a * h + b into one FMA (one rounding, not two) in the state updates.
Triton 3.9 does so by default but warns that 3.10 will not; set here, the kernels' numerics do
not change with the Triton version."""


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_starts):
    """The output, and when `save_starts` the (b, d, chunks, n) fp32 states at chunk starts (else None).
    The (b, d, L) and (b, n, L) inputs must be contiguous."""
    b, d, L = u.shape
    n = A.shape[1]
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    starts = u.new_empty(b, d, triton.cdiv(L, CHUNK_T), n, dtype=torch.float32) if save_starts else None
    absent = u  # a valid pointer for inputs the constexpr flags switch off
    scan_forward_kernel[(b, triton.cdiv(d, BLOCK_D))](
        u,
        delta,
        A.float().contiguous(),
        B,
        C,
        absent if D is None else D.contiguous(),
        absent if z is None else z,
        absent if delta_bias is None else delta_bias.contiguous(),
        out,
        absent if starts is None else starts,
        d,
        L,
        n,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus,
        SAVE_STARTS=save_starts,
        BLOCK_D=BLOCK_D,
        BLOCK_N=triton.next_power_of_2(n),
        CHUNK_T=CHUNK_T,
        enable_fp_fusion=FP_FUSION,
    )
    return out, starts


def _backward(grad_out, u, delta, A, B, C, D, z, delta_bias, starts, delta_softplus):
    """The gradients of all eight inputs, in their dtypes (None for absent options)."""
    b, d, L = u.shape
    n = A.shape[1]
    blocks, block_n = triton.cdiv(d, BLOCK_D), triton.next_power_of_2(n)
    f32 = {"device": u.device, "dtype": torch.float32}
    scratch = torch.empty(b * blocks * CHUNK_T * BLOCK_D * block_n, **f32)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = None if z is None else torch.empty_like(z)
    dA = torch.empty(b, d, n, **f32)
    dD = None if D is None else torch.empty(b, d, **f32)
    dbias = None if delta_bias is None else torch.empty(b, d, **f32)
    dB, dC = torch.empty(2, b, blocks, L, n, **f32)
    absent = u  # as in the forward
    scan_backward_kernel[(b, blocks)](
        u,
        delta,
        A.float().contiguous(),
        B,
        C,
        absent if D is None else D.contiguous(),
        absent if z is None else z,
        absent if delta_bias is None else delta_bias.contiguous(),
        starts,
        grad_out.contiguous(),
        scratch,
        du,
        ddelta,
        absent if dz is None else dz,
        dA,
        absent if dD is None else dD,
        absent if dbias is None else dbias,
        dB,
        dC,
        d,
        L,
        n,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus,
        BLOCK_D=BLOCK_D,
        BLOCK_N=block_n,
        CHUNK_T=CHUNK_T,
        enable_fp_fusion=FP_FUSION,
    )
    return (
        du,
        ddelta,
        dA.sum(0).to(A.dtype),
        dB.sum(1).transpose(1, 2).to(B.dtype),
        dC.sum(1).transpose(1, 2).to(C.dtype),
        None if D is None else dD.sum(0).to(D.dtype),
        dz,
        None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype),
    )


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        u, delta, B, C = (x.contiguous() for x in (u, delta, B, C))
        z = None if z is None else z.contiguous()
        out, starts = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_starts=True)
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, starts)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        *inputs, starts = ctx.saved_tensors
        grads = _backward(grad_out, *inputs, starts, ctx.delta_softplus)
        return (*(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)), None)


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
    """`selective_scan_ref`'s result from fused Triton kernels (fp32 inside), forward and backward;
    (b, d, L) in u's dtype. CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    if triton is None:
        raise RuntimeError(f"selective_scan_triton needs triton, which does not import; {TRITON_INSTALL}")
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        return _TritonScan.apply(*inputs, delta_softplus)
    # Nothing to differentiate: skip saving the chunk-start states.
    contiguous = (None if x is None else x.contiguous() for x in inputs)
    return _forward(*contiguous, delta_softplus, save_starts=False)[0]
