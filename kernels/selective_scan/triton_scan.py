"""The selective scan as Triton kernels, forward and backward: the fast path on GPUs.

The recurrence and shapes are in `kernels.selective_scan.ref`; the adjoint recurrence and the
gradient formulas are those of `kernels.selective_scan.chunked`'s docstring.

Forward. One program owns BLOCK_D channels of one sequence and all n states, keeps the state
h (BLOCK_D, BLOCK_N) in registers in fp32, and walks the L steps: load u, delta, z for its
channels and B, C for the step, discretise, update h, read out, store. It fuses the whole of
`selective_scan_ref` (bias, softplus, skip, gate), so it reads the (b, d, L) inputs once.
Consecutive steps of one channel share a cache line, so the per-step loads mostly hit cache.
When a gradient is wanted it also writes h at the start of every chunk of CHUNK_T steps, a
(b, d, ceil(L / CHUNK_T), n) fp32 tensor, as mamba_ssm's CUDA kernel does; without one
(inference, or under no_grad) it writes nothing but the output.

Backward. The same grid; each program walks its chunks in reverse. For a chunk it recomputes
the states from the saved start into its own slice of a scratch buffer (CHUNK_T, BLOCK_D,
BLOCK_N) in global memory, then runs the adjoint recurrence lambda_t = C_t g_t +
exp(delta_{t+1} A) lambda_{t+1} backwards over the chunk, reading h_{t-1} back from the
scratch, with g the gradient of the scan's readout after undoing the gate and the skip in the
kernel (dz, dD and u's skip term come out of the same step). Every (b, d, L) gradient is
written once; the reductions are deterministic:
- over time, in registers: dA (d, n), dD, d(delta_bias) (d,) per program, to (b, d, .)
  partial buffers that a torch sum over the batch finishes;
- over channels, for dB and dC (b, n, L): each program sums its BLOCK_D channels and writes
  a (b, d / BLOCK_D, L, n) fp32 partial buffer, which a torch sum over the blocks finishes.
  `tl.atomic_add` into (b, n, L) would need less memory, but fp32 atomics add in whatever
  order the programs arrive, so two runs would give different dB and dC in the last bits and
  training runs would not reproduce. The partials are 2 n / BLOCK_D floats per (b, d, L)
  element (one fp32 (b, d, L) tensor at n = 16, BLOCK_D = 32), transient within the backward.
  The (L, n) order keeps each step's store one contiguous BLOCK_N-float run.

Why a scratch buffer rather than running the recurrence backwards, h_{t-1} = (h_t - delta_t
B_t u_t) / exp(delta_t A): exp(delta_t A) underflows to 0 in trained models (the chunked
path's tests reach e^-640), where that division loses the state entirely. Triton has no
indexable shared memory, so the chunk's states go to global memory, where a program's slice
(CHUNK_T * BLOCK_D * BLOCK_N * 4 bytes, 128 KiB at the defaults) is written and read back
while it is still in L2. A barrier orders the two passes: the state a thread reads back may
have been written by another thread of the program.

Memory, besides the (b, d, L) inputs and gradients: the saved chunk starts, b*d*n*L / CHUNK_T
floats; in the backward, the scratch, b * ceil(d / BLOCK_D) * CHUNK_T * BLOCK_D * BLOCK_N floats
(about b*d*n*CHUNK_T), and the dB, dC partials, 2 b*n*L * ceil(d / BLOCK_D). Nothing of size
(b, d, L, n) exists at any time. The first two trade against each other through CHUNK_T:
their sum b*d*n*(L / CHUNK_T + CHUNK_T) is least at CHUNK_T = sqrt(L), 64 at L = 4096.

Under TRITON_INTERPRET=1, set before this module is imported (triton reads it when the kernels
are defined), the kernels run on CPU tensors in Triton's interpreter: how the tests check them
without a GPU.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

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

if triton is not None:

    @triton.jit
    def _scan_forward_kernel(
        u_ptr,
        delta_ptr,
        A_ptr,
        B_ptr,
        C_ptr,
        D_ptr,
        z_ptr,
        bias_ptr,
        out_ptr,
        starts_ptr,
        d_inner,
        L,
        d_state,
        HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr,
        SAVE_STARTS: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CHUNK_T: tl.constexpr,
    ):
        batch = tl.program_id(0)
        chan = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        state = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        chan_ok, state_ok = chan < d_inner, state < d_state
        tile_ok = chan_ok[:, None] & state_ok[None, :]
        # Padded lanes load A = 0 and B = C = 0, so their state stays 0 and adds nothing.
        A = tl.load(A_ptr + chan[:, None] * d_state + state[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        if HAS_D:
            D = tl.load(D_ptr + chan, mask=chan_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chan, mask=chan_ok, other=0.0).to(tl.float32)
        row = (batch * d_inner + chan) * L  # (BLOCK_D,) offsets of (b, d, L) rows
        col = (batch * d_state + state) * L  # (BLOCK_N,) offsets of (b, n, L) rows
        n_chunks = tl.cdiv(L, CHUNK_T)
        starts = starts_ptr + ((batch * d_inner + chan[:, None]) * n_chunks) * d_state + state[None, :]
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for c in range(n_chunks):
            if SAVE_STARTS:
                tl.store(starts + c * d_state, h, mask=tile_ok)
            for t in range(c * CHUNK_T, tl.minimum(c * CHUNK_T + CHUNK_T, L)):
                u = tl.load(u_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
                dt = tl.load(delta_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    dt += bias
                if SOFTPLUS:
                    # torch's softplus threshold; the exp of the branch not taken may be inf, harmlessly.
                    # log(1 + e^x) rounds to 0 below x ~ -17, where softplus is under 4e-8. This and
                    # the sigmoids are written out, in the backward too, rather than called as jit
                    # functions: Triton's interpreter, which the tests run, re-patches triton.language
                    # on every such call, and inlining them takes a fifth off the tests' time.
                    dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
                B = tl.load(B_ptr + col + t, mask=state_ok, other=0.0).to(tl.float32)
                C = tl.load(C_ptr + col + t, mask=state_ok, other=0.0).to(tl.float32)
                h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * B[None, :]
                y = tl.sum(h * C[None, :], axis=1)  # (BLOCK_D,)
                if HAS_D:
                    y += D * u
                if HAS_Z:
                    z = tl.load(z_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
                    y *= z / (1.0 + tl.exp(-z))
                tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=chan_ok)

    @triton.jit
    def _scan_backward_kernel(
        u_ptr,
        delta_ptr,
        A_ptr,
        B_ptr,
        C_ptr,
        D_ptr,
        z_ptr,
        bias_ptr,
        starts_ptr,
        grad_ptr,
        scratch_ptr,
        du_ptr,
        ddelta_ptr,
        dz_ptr,
        dA_ptr,
        dD_ptr,
        dbias_ptr,
        dB_ptr,
        dC_ptr,
        d_inner,
        L,
        d_state,
        HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        CHUNK_T: tl.constexpr,
    ):
        batch, block, n_blocks = tl.program_id(0), tl.program_id(1), tl.num_programs(1)
        lane = tl.arange(0, BLOCK_D)
        chan = block * BLOCK_D + lane  # (BLOCK_D,)
        state = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        chan_ok, state_ok = chan < d_inner, state < d_state
        tile_ok = chan_ok[:, None] & state_ok[None, :]
        # As in the forward, padded lanes have A = 0 and u = B = C = g = 0: their states and
        # adjoints stay 0 and add nothing to the sums over channels and states.
        A = tl.load(A_ptr + chan[:, None] * d_state + state[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        if HAS_D:
            D = tl.load(D_ptr + chan, mask=chan_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chan, mask=chan_ok, other=0.0).to(tl.float32)
        row = (batch * d_inner + chan) * L  # (BLOCK_D,) offsets of (b, d, L) rows
        col = (batch * d_state + state) * L  # (BLOCK_N,) offsets of (b, n, L) rows
        program = batch * n_blocks + block
        # Padded to the whole tile, so the scratch needs no mask.
        scratch = scratch_ptr + program * (CHUNK_T * BLOCK_D * BLOCK_N) + lane[:, None] * BLOCK_N + state[None, :]
        partial = program * L * d_state + state  # (BLOCK_N,) offsets into the (b, blocks, L, n) dB, dC partials
        n_chunks = tl.cdiv(L, CHUNK_T)
        starts = starts_ptr + ((batch * d_inner + chan[:, None]) * n_chunks) * d_state + state[None, :]

        carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # exp(delta_{t+1} A) lambda_{t+1}
        dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        dD = tl.zeros([BLOCK_D], dtype=tl.float32)
        dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
        for c_rev in range(n_chunks):
            c = n_chunks - 1 - c_rev
            first = c * CHUNK_T
            last = tl.minimum(first + CHUNK_T, L)  # one past the chunk's last step
            h = tl.load(starts + c * d_state, mask=tile_ok, other=0.0)
            for t in range(first, last):
                u = tl.load(u_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
                dt = tl.load(delta_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    dt += bias
                if SOFTPLUS:
                    dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
                B = tl.load(B_ptr + col + t, mask=state_ok, other=0.0).to(tl.float32)
                tl.store(scratch + (t - first) * (BLOCK_D * BLOCK_N), h)  # h_{t-1}, the state step t reads
                h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * B[None, :]
            tl.debug_barrier()

            for i in range(last - first):
                t = last - 1 - i
                u = tl.load(u_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
                x = tl.load(delta_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    x += bias
                dt = x
                if SOFTPLUS:
                    dt = tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)
                B = tl.load(B_ptr + col + t, mask=state_ok, other=0.0).to(tl.float32)
                C = tl.load(C_ptr + col + t, mask=state_ok, other=0.0).to(tl.float32)
                g = tl.load(grad_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
                h_prev = tl.load(scratch + (t - first) * (BLOCK_D * BLOCK_N))
                decay = tl.exp(dt[:, None] * A)
                h = decay * h_prev + (dt * u)[:, None] * B[None, :]

                if HAS_Z:  # out = (y + D u) silu(z): dz needs y again, from this step's state
                    y = tl.sum(h * C[None, :], axis=1)
                    if HAS_D:
                        y += D * u
                    z = tl.load(z_ptr + row + t, mask=chan_ok, other=0.0).to(tl.float32)
                    sig = 1.0 / (1.0 + tl.exp(-z))
                    dz = g * y * sig * (1.0 + z * (1.0 - sig))
                    tl.store(dz_ptr + row + t, dz.to(dz_ptr.dtype.element_ty), mask=chan_ok)
                    g *= z * sig
                du = tl.zeros([BLOCK_D], dtype=tl.float32)
                if HAS_D:
                    dD += g * u
                    du = g * D

                lam = g[:, None] * C[None, :] + carry
                tl.store(dC_ptr + partial + t * d_state, tl.sum(g[:, None] * h, axis=0), mask=state_ok)
                tl.store(dB_ptr + partial + t * d_state, tl.sum((dt * u)[:, None] * lam, axis=0), mask=state_ok)
                d_dtu = tl.sum(lam * B[None, :], axis=1)  # d out / d(delta_t u_t)
                carry = decay * lam
                q = carry * h_prev  # d out / d(delta_t A)
                dA += dt[:, None] * q
                du += dt * d_dtu
                ddt = u * d_dtu + tl.sum(q * A, axis=1)
                if SOFTPLUS:  # softplus' = sigmoid, and 1 past torch's threshold, where softplus is x
                    ddt *= tl.where(x <= 20.0, 1.0 / (1.0 + tl.exp(-x)), 1.0)
                if HAS_BIAS:
                    dbias += ddt
                tl.store(du_ptr + row + t, du.to(du_ptr.dtype.element_ty), mask=chan_ok)
                tl.store(ddelta_ptr + row + t, ddt.to(ddelta_ptr.dtype.element_ty), mask=chan_ok)
            # The next chunk's recompute overwrites the scratch that threads may still be reading.
            tl.debug_barrier()

        per_batch = batch * d_inner + chan  # (BLOCK_D,) offsets of (b, d) partials
        tl.store(dA_ptr + per_batch[:, None] * d_state + state[None, :], dA, mask=tile_ok)
        if HAS_D:
            tl.store(dD_ptr + per_batch, dD, mask=chan_ok)
        if HAS_BIAS:
            tl.store(dbias_ptr + per_batch, dbias, mask=chan_ok)


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_starts):
    """The output, and when `save_starts` the (b, d, chunks, n) fp32 states at chunk starts (else None).
    The (b, d, L) and (b, n, L) inputs must be contiguous."""
    b, d, L = u.shape
    n = A.shape[1]
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    starts = u.new_empty(b, d, triton.cdiv(L, CHUNK_T), n, dtype=torch.float32) if save_starts else None
    absent = u  # a valid pointer for inputs the constexpr flags switch off
    _scan_forward_kernel[(b, triton.cdiv(d, BLOCK_D))](
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
    _scan_backward_kernel[(b, blocks)](
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
