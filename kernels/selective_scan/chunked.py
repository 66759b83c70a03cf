"""The selective scan in chunks of time, with a hand-written backward: the fast path on CPUs.

The recurrence and shapes are in `kernels.selective_scan.ref`. Here the sequence is cut into
chunks of CHUNK steps. For each chunk, the decays exp(delta A) and inputs delta B u of all its
steps are computed at once into (CHUNK, b, n, d) buffers, the state is advanced through them
(one fused multiply-add over a (b, n, d) slab per step), the readout C h is one batched matmul,
and the last state is carried into the next chunk.

The backward walks the chunks in reverse. It recomputes a chunk's states from the state saved
at its start, runs the adjoint recurrence lambda_t = C_t g_t + exp(delta_{t+1} A) lambda_{t+1}
(g the gradient of y), and reads every gradient off h and lambda:
    dC_t = sum_d g_t h_t          dB_t = sum_d delta_t u_t lambda_t    d(delta u)_t = sum_n B_t lambda_t
    q_t = lambda_t exp(delta_t A) h_{t-1}:   d(delta)_t += sum_n A q_t,   dA = sum_{b,t} delta_t q_t

Memory: the chunk buffers hold 4 * CHUNK * b*n*d floats and the saved chunk-start states
ceil(L / CHUNK) * b*n*d, so nothing of size (b, d, L, n) exists at any time (the reference's
autograd graph keeps several). Besides the (b, d, L) inputs, the backward keeps time-major
copies of delta and delta * u: O(b*d*L + b*d*n*(CHUNK + L / CHUNK)) in all.

Why the steps inside a chunk run one after another rather than as a parallel scan (cumulative
sums of log-decays, or a (CHUNK x CHUNK) decay matrix per channel and state): with a decay
per (d, n), as Mamba-1 has, those cost more passes over the (b, d, L, n) data than the
sequential update, and exp(-cumsum(delta A)) overflows fp32 once delta |A| sums past ~88
within a chunk, which trained models reach. On a few CPU cores every pass is bandwidth-bound,
so the fewest passes win; a (b, n, d) slab per step is big enough (b*d*n = 65536 at the
benchmark size) that the Python loop costs little. GPUs take the Triton kernel instead.
"""

from __future__ import annotations

import torch

from kernels.selective_scan.ref import discretisation_step, skip_and_gate

CHUNK = 32
"""Steps per chunk: each (CHUNK, b, n, d) buffer is 8 MiB at b*d*n = 65536, within the
last-level cache; 16 and 64 measured within noise of 32 at the benchmark size, 8 slower."""


def _time_major(x: torch.Tensor) -> torch.Tensor:
    """(b, c, L) -> contiguous (L, b, c), so that each step's (b, c) slice is one block of memory."""
    return x.permute(2, 0, 1).contiguous()


def _advance(a, hs, delta_c, du_c, B_c, At):
    """Fill a chunk: a[t] = exp(delta_t A) and hs[t + 1] = a[t] hs[t] + delta_t u_t B_t, given
    hs[0], the state before the chunk. a, hs: (CHUNK (+ 1), b, n, d) buffers; the rest (k, b, .)."""
    k = delta_c.shape[0]
    torch.mul(delta_c[:, :, None], At, out=a[:k]).exp_()  # (k, b, n, d)
    torch.mul(du_c[:, :, None], B_c[..., None], out=hs[1 : k + 1])  # (k, b, n, d)
    a_t, h_t = a.unbind(0), hs.unbind(0)
    for t in range(k):
        h_t[t + 1].addcmul_(a_t[t], h_t[t])


class _ChunkedScan(torch.autograd.Function):
    """y = sum_n C h for fp32 u, delta (b, d, L), A (d, n), B, C (b, n, L); y is (b, d, L)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        with torch.autocast(u.device.type, enabled=False):  # the matmuls here must stay fp32
            # A transpose to time-major costs about a pass over the states (a strided copy), so
            # the backward reuses these: 2 b*d*L floats more saved, 2 transposes fewer.
            steps = [_time_major(x) for x in (delta, delta * u, B, C)]  # (L, b, d) or (L, b, n)
            At = A.t().contiguous()  # (n, d): d innermost, so every slab op runs over contiguous memory
            y, starts = _forward(*steps, At)
        ctx.save_for_backward(u, delta, At, starts, *steps)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, At, starts, *steps = ctx.saved_tensors
        with torch.autocast(u.device.type, enabled=False):
            grad_du, grad_dA, grad_At, grad_B, grad_C = _backward(_time_major(grad_y.float()), At, starts, *steps)
        grad_u = grad_du * delta
        grad_delta = grad_du.mul_(u).add_(grad_dA)
        return grad_u, grad_delta, grad_At.t(), grad_B, grad_C


def _forward(delta, du, B, C, At):
    L, b, d = delta.shape
    n = At.shape[0]
    T = min(CHUNK, L)
    a = delta.new_empty(T, b, n, d)
    hs = delta.new_zeros(T + 1, b, n, d)
    y_c = delta.new_empty(T, b, 1, d)
    y = delta.new_empty(b, d, L)
    starts = delta.new_empty(-(-L // T), b, n, d)
    for i, s in enumerate(range(0, L, T)):
        k = min(T, L - s)
        starts[i] = hs[0]
        _advance(a, hs, delta[s : s + k], du[s : s + k], B[s : s + k], At)
        torch.matmul(C[s : s + k, :, None], hs[1 : k + 1], out=y_c[:k])  # (k, b, 1, n) @ (k, b, n, d)
        y[:, :, s : s + k] = y_c[:k, :, 0].permute(1, 2, 0)
        hs[0] = hs[k]
    return y, starts


def _backward(grad_y, At, starts, delta, du, B, C):
    """Gradients through delta * u and delta * A (b, d, L), of A^T (n, d), B and C (b, n, L);
    grad_y and the inputs are time-major."""
    L, b, d = delta.shape
    n = At.shape[0]
    T = min(CHUNK, L)
    a = delta.new_empty(T, b, n, d)
    hs = delta.new_empty(T + 1, b, n, d)
    lam = delta.new_empty(T, b, n, d)  # dL/dh_t
    lam_t = lam.unbind(0)
    carry = delta.new_zeros(b, n, d)  # a_{t+1} lambda_{t+1} for the last step of the chunk, from the next
    k_b_n, k_b_d = delta.new_empty(T, b, n, 1), delta.new_empty(T, b, 1, d)
    grad_du, grad_dA = delta.new_empty(b, d, L), delta.new_empty(b, d, L)
    grad_B, grad_C = delta.new_empty(b, n, L), delta.new_empty(b, n, L)
    grad_At = torch.zeros_like(At)
    for i in reversed(range(starts.shape[0])):
        s = i * T
        k = min(T, L - s)
        delta_c, du_c, g = delta[s : s + k], du[s : s + k], grad_y[s : s + k]
        hs[0] = starts[i]
        _advance(a, hs, delta_c, du_c, B[s : s + k], At)

        torch.mul(g[:, :, None], C[s : s + k, ..., None], out=lam[:k])
        lam_t[k - 1].add_(carry)
        a_t = a.unbind(0)
        for t in range(k - 2, -1, -1):
            lam_t[t].addcmul_(a_t[t + 1], lam_t[t + 1])

        torch.matmul(hs[1 : k + 1], g[..., None], out=k_b_n[:k])
        grad_C[:, :, s : s + k] = k_b_n[:k, ..., 0].permute(1, 2, 0)
        torch.matmul(lam[:k], du_c[..., None], out=k_b_n[:k])
        grad_B[:, :, s : s + k] = k_b_n[:k, ..., 0].permute(1, 2, 0)
        torch.matmul(B[s : s + k, :, None], lam[:k], out=k_b_d[:k])
        grad_du[:, :, s : s + k] = k_b_d[:k, :, 0].permute(1, 2, 0)

        q = a[:k].mul_(lam[:k])  # a_t lambda_t, in place: a is recomputed for every chunk
        carry.copy_(q[0])
        q.mul_(hs[:k])  # q_t = dL/d(delta_t A) = lambda_t a_t h_{t-1}
        grad_dA[:, :, s : s + k] = torch.mul(q, At, out=lam[:k]).sum(2).permute(1, 2, 0)
        grad_At += q.mul_(delta_c[:, :, None]).sum((0, 1))
    return grad_du, grad_dA, grad_At, grad_B, grad_C


def selective_scan_chunked(
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
    """`selective_scan_ref`'s result, computed chunk by chunk in fp32; (b, d, L) in u's dtype."""
    delta = discretisation_step(delta, delta_bias, delta_softplus)
    y = _ChunkedScan.apply(u.float(), delta, A.float(), B.float(), C.float())
    return skip_and_gate(y, u, D, z)
