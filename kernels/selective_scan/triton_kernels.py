"""The Triton kernels of the selective scan, forward and backward; `triton_scan` launches them.

The recurrence and shapes are in `kernels.selective_scan.ref`; the adjoint recurrence and the
gradient formulas are those of `kernels.selective_scan.chunked`'s docstring. Imported only when
triton is installed.

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
written once; the sums over time (dA, dD, d(delta_bias)) and over channels (dB, dC) go to
partial buffers that `triton_scan` finishes, deterministically.

Why a scratch buffer rather than running the recurrence backwards, h_{t-1} = (h_t - delta_t
B_t u_t) / exp(delta_t A): exp(delta_t A) underflows to 0 in trained models (the chunked
path's tests reach e^-640), where that division loses the state entirely. Triton has no
indexable shared memory, so the chunk's states go to global memory, where a program's slice
(CHUNK_T * BLOCK_D * BLOCK_N * 4 bytes, 128 KiB at the defaults) is written and read back
while it is still in L2. A barrier orders the two passes: the state a thread reads back may
have been written by another thread of the program.

Under TRITON_INTERPRET=1 they run on CPU tensors, in Triton's interpreter (see `triton_scan`).
"""

import triton
import triton.language as tl


@triton.jit
def scan_forward_kernel(
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
def _chunk_states(
    reads,
    scratch,
    params,
    h,
    span,
    ok,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The states again, from h before step `first` up to `last` - 1: each step's h_{t-1} into
    the program's scratch, as the forward computed it. Arguments as for `_chunk_adjoint`."""
    u_row, delta_row, B_col = reads[0], reads[1], reads[2]
    A, bias = params[0], params[2]
    first, last = span
    chan_ok, state_ok = ok
    for t in range(first, last):
        u = tl.load(u_row + t, mask=chan_ok, other=0.0).to(tl.float32)
        dt = tl.load(delta_row + t, mask=chan_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
        B = tl.load(B_col + t, mask=state_ok, other=0.0).to(tl.float32)
        tl.store(scratch + (t - first) * (BLOCK_D * BLOCK_N), h)  # h_{t-1}, the state step t reads
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * B[None, :]


@triton.jit
def _chunk_adjoint(
    reads,
    writes,
    scratch,
    params,
    sums,
    span,
    ok,
    d_state,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Steps `last` - 1 down to `first` of the adjoint recurrence, h_{t-1} read from the scratch:
    stores each step's du, ddelta, dz and dB, dC partials; returns `sums` (the carry into the step
    before, dA, dD, d(delta_bias)) updated. reads, writes: the program's rows of u, delta, B, C, z,
    grad and of du, ddelta, dz, dB, dC at step 0 (step t at + t; + t * d_state in dB, dC)."""
    u_row, delta_row, B_col, C_col, z_row, grad_row = reads
    du_row, ddelta_row, dz_row, dB_part, dC_part = writes
    A, D, bias = params
    carry, dA, dD, dbias = sums
    first, last = span
    chan_ok, state_ok = ok
    for i in range(last - first):
        t = last - 1 - i
        u = tl.load(u_row + t, mask=chan_ok, other=0.0).to(tl.float32)
        x = tl.load(delta_row + t, mask=chan_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += bias
        dt = x
        if SOFTPLUS:
            dt = tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)
        B = tl.load(B_col + t, mask=state_ok, other=0.0).to(tl.float32)
        C = tl.load(C_col + t, mask=state_ok, other=0.0).to(tl.float32)
        g = tl.load(grad_row + t, mask=chan_ok, other=0.0).to(tl.float32)
        h_prev = tl.load(scratch + (t - first) * (BLOCK_D * BLOCK_N))
        decay = tl.exp(dt[:, None] * A)
        h = decay * h_prev + (dt * u)[:, None] * B[None, :]

        if HAS_Z:  # out = (y + D u) silu(z): dz needs y again, from this step's state
            y = tl.sum(h * C[None, :], axis=1)
            if HAS_D:
                y += D * u
            z = tl.load(z_row + t, mask=chan_ok, other=0.0).to(tl.float32)
            sig = 1.0 / (1.0 + tl.exp(-z))
            dz = g * y * sig * (1.0 + z * (1.0 - sig))
            tl.store(dz_row + t, dz.to(dz_row.dtype.element_ty), mask=chan_ok)
            g *= z * sig
        du = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_D:
            dD += g * u
            du = g * D

        lam = g[:, None] * C[None, :] + carry
        tl.store(dC_part + t * d_state, tl.sum(g[:, None] * h, axis=0), mask=state_ok)
        tl.store(dB_part + t * d_state, tl.sum((dt * u)[:, None] * lam, axis=0), mask=state_ok)
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
        tl.store(du_row + t, du.to(du_row.dtype.element_ty), mask=chan_ok)
        tl.store(ddelta_row + t, ddt.to(ddelta_row.dtype.element_ty), mask=chan_ok)
    return carry, dA, dD, dbias


@triton.jit
def scan_backward_kernel(
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
    # Defined when switched off too (as zeros, never read), since the chunk helpers take them.
    D = tl.zeros([BLOCK_D], dtype=tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
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

    # The chunk helpers' arguments; see `_chunk_adjoint`.
    reads = (u_ptr + row, delta_ptr + row, B_ptr + col, C_ptr + col, z_ptr + row, grad_ptr + row)
    writes = (du_ptr + row, ddelta_ptr + row, dz_ptr + row, dB_ptr + partial, dC_ptr + partial)
    params, ok = (A, D, bias), (chan_ok, state_ok)
    carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # exp(delta_{t+1} A) lambda_{t+1}
    dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for c_rev in range(n_chunks):
        c = n_chunks - 1 - c_rev
        first = c * CHUNK_T
        span = (first, tl.minimum(first + CHUNK_T, L))  # the chunk's steps, first to one past its last
        h = tl.load(starts + c * d_state, mask=tile_ok, other=0.0)
        _chunk_states(reads, scratch, params, h, span, ok, HAS_BIAS, SOFTPLUS, BLOCK_D, BLOCK_N)
        tl.debug_barrier()
        sums = (carry, dA, dD, dbias)
        carry, dA, dD, dbias = _chunk_adjoint(
            reads, writes, scratch, params, sums, span, ok, d_state, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BLOCK_D, BLOCK_N
        )
        # The next chunk's recompute overwrites the scratch that threads may still be reading.
        tl.debug_barrier()

    per_batch = batch * d_inner + chan  # (BLOCK_D,) offsets of (b, d) partials
    tl.store(dA_ptr + per_batch[:, None] * d_state + state[None, :], dA, mask=tile_ok)
    if HAS_D:
        tl.store(dD_ptr + per_batch, dD, mask=chan_ok)
    if HAS_BIAS:
        tl.store(dbias_ptr + per_batch, dbias, mask=chan_ok)
