"""RWKV-4's WKV recurrence: a readable sequential reference beside a chunked fast path.

Shapes: k, v and the output are (B, T, C) = (batch, time, channels); w and u are (C,). Each
channel is an independent recurrence with a decay w = -exp(time_decay) < 0 and a bonus u
(time_first) for the current token (Peng et al. 2023, eq. 14, https://arxiv.org/abs/2305.13048):

    y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
          / (sum_{i<t} e^{(t-1-i) w + k_i}     + e^{u + k_t})

Both paths compute in fp32 and round once to v's dtype. Neither uses a matmul, so autocast
leaves them alone.

- `wkv_ref`: the recurrence one step at a time, with the running numerator a, denominator b
  and the exponent p they are scaled by, as the forward of BlinkDL/RWKV-LM:
  RWKV-v4/cuda/wkv_cuda.cu. Exact for any k; T sequential steps of tiny ops, differentiated
  by autograd.
- `wkv_fast`: chunks of CHUNK steps, all chunks of all sequences advanced together. Each chunk
  is scaled once by its largest k, so inside it the plain sums need no running maximum; only
  the state carried from chunk to chunk, (a, b, p) as in the reference, is scanned one chunk
  at a time. A hand-written backward (`_ChunkedWKV`) keeps three (B, T, C) tensors where
  autograd would keep a dozen.
- `wkv`: what models call. It takes the fast path ("chunked") unless SCALING_WKV_IMPL=ref asks
  for the reference; `wkv_impl()` names the path so the trainer can record it as a tag (the
  convention of `kernels.dispatch`).

Where the fast path is less general: with one scale per chunk, it matches the reference while
k stays within a range of about 60 over any two neighbouring chunks (trained RWKV-4 models
stay far inside that); the reference has no such limit. Within that range it is the more
accurate of the two (it rescales once per chunk instead of once per step).

`scaling bench wkv` checks the fast path against the reference and times both.
"""

from __future__ import annotations

import torch

from kernels.dispatch import Dispatch, Impl

ENV_VAR = "SCALING_WKV_IMPL"

CHUNK = 64
"""Steps per chunk of the fast path, which runs CHUNK in-chunk steps and T / CHUNK chunk steps:
the fastest of 16, 32 and 64 at T = 1024 on CPU, and a divisor of the study's training lengths."""
_MAX_CARRY = 60.0
"""Largest factor e^_MAX_CARRY by which a carried state may outweigh the chunk's own scale,
so that e^u times a sum of T such terms stays below fp32's e^88."""


def wkv_ref(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The recurrence step by step: y_t from the state (a, b) = e^-p (numerator, denominator) of
    the sums over i < t, then the state advanced by one decay step and token t."""
    B, _, C = k.shape
    w, u = w.float(), u.float()
    a = k.new_zeros(B, C, dtype=torch.float32)
    b = torch.zeros_like(a)
    p = torch.full_like(a, -1e38)  # log-scale of the empty state: e^p = 0 without inf - inf
    ys = []
    for k_t, v_t in zip(k.float().unbind(1), v.float().unbind(1)):  # (B, C) each
        # The maxima only rescale a and b and y does not depend on them, so no gradient flows
        # through them (as in the CUDA kernel's hand-written backward).
        q = torch.maximum(p, u + k_t).detach()
        e_state, e_now = torch.exp(p - q), torch.exp(u + k_t - q)
        ys.append((e_state * a + e_now * v_t) / (e_state * b + e_now))
        q = torch.maximum(p + w, k_t).detach()
        e_state, e_now = torch.exp(p + w - q), torch.exp(k_t - q)
        a, b, p = e_state * a + e_now * v_t, e_state * b + e_now, q
    return torch.stack(ys, dim=1).to(v.dtype)  # (B, T, C)


def _carry(s: torch.Tensor, r: torch.Tensor, m: torch.Tensor, w: torch.Tensor, B: int):
    """The state entering each chunk, from what each chunk adds to it.

    s, r: (N, C), N = B * n chunks: sum_i e^{(L-1-i) w} e^{k_i - m} (v_i, 1) over the chunk's
    steps i; m: (N, C), the chunk's largest k. Returns the entering numerator and denominator
    in each chunk's scale e^m, (N, C) each, and the scan's coefficients for `_carry_backward`.
    Chunk j + 1 receives chunk j's own part and e^{L w} times what chunk j received.
    """
    N, C = m.shape
    n = N // B
    s, r, m = (x.view(B, n, C) for x in (s, r, m))
    decay = CHUNK * w
    a, b, p = torch.zeros_like(s), torch.zeros_like(r), m.clone()  # (a, b) scaled by e^-p
    keep, add = torch.zeros_like(s), torch.zeros_like(s)  # a_{j+1} = keep_j a_j + add_j s_j
    for j in range(n - 1):
        p[:, j + 1] = torch.maximum(p[:, j] + decay, m[:, j])
        torch.exp(p[:, j] + decay - p[:, j + 1], out=keep[:, j])
        torch.exp(m[:, j] - p[:, j + 1], out=add[:, j])
        a[:, j + 1] = keep[:, j] * a[:, j] + add[:, j] * s[:, j]
        b[:, j + 1] = keep[:, j] * b[:, j] + add[:, j] * r[:, j]
    to_chunk = torch.exp((p - m).clamp(max=_MAX_CARRY))
    return (a * to_chunk).view(N, C), (b * to_chunk).view(N, C), (keep, add, to_chunk)


def _carry_backward(g_a: torch.Tensor, g_b: torch.Tensor, coefficients) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the chunks' own parts (s, r) from those of the entering states. The scan is
    linear in (s, r) with the saved coefficients; its dependence on w is left to the identity
    in `_ChunkedWKV.backward`."""
    keep, add, to_chunk = coefficients
    B, n, C = keep.shape
    g_a, g_b = (g.view(B, n, C) * to_chunk for g in (g_a, g_b))
    g_s, g_r = torch.zeros_like(g_a), torch.zeros_like(g_b)
    for j in range(n - 2, -1, -1):
        g_s[:, j], g_r[:, j] = add[:, j] * g_a[:, j + 1], add[:, j] * g_b[:, j + 1]
        g_a[:, j] += keep[:, j] * g_a[:, j + 1]
        g_b[:, j] += keep[:, j] * g_b[:, j + 1]
    return g_s.view(B * n, C), g_r.view(B * n, C)


class _ChunkedWKV(torch.autograd.Function):
    """fp32 (C,), (C,), (B, T, C), (B, T, C) -> (B, T, C), T a multiple of CHUNK.

    Inside, (N, L, C) views with N = B * n chunks; every loop step works on an (N, C) slice.
    Within chunk scale e^m, with x = e^{k - m} v and e = e^{k - m}: the running sums
    s_{t+1} = e^w s_t + x_t, r_{t+1} = e^w r_t + e_t start from the carried state, and
    y_t = (s_t + e^u x_t) / (r_t + e^u e_t).
    """

    @staticmethod
    def forward(ctx, w, u, k, v):
        B, T, C = k.shape
        L, N = CHUNK, B * (T // CHUNK)
        k, v = k.view(N, L, C), v.view(N, L, C)
        decay, bonus = torch.exp(w), torch.exp(u)
        m = k.amax(dim=1)  # (N, C)
        e = torch.empty_like(k)
        s, r, x_t = k.new_zeros(N, C), k.new_zeros(N, C), k.new_empty(N, C)
        for t in range(L):  # each chunk's own part of the state after it
            e_t = torch.sub(k[:, t], m, out=e[:, t]).exp_()
            torch.mul(e_t, v[:, t], out=x_t)
            torch.addcmul(x_t, decay, s, out=s)
            torch.addcmul(e_t, decay, r, out=r)
        s_own, r_own = s, r
        s, r, coefficients = _carry(s_own, r_own, m, w, B)
        y, inv_den, num_t, den_t = torch.empty_like(k), torch.empty_like(k), k.new_empty(N, C), k.new_empty(N, C)
        for t in range(L):
            e_t = e[:, t]
            torch.mul(e_t, v[:, t], out=x_t)
            torch.addcmul(s, bonus, x_t, out=num_t)
            torch.addcmul(r, bonus, e_t, out=den_t)
            # 1 / den is kept rather than den: the backward then multiplies instead of dividing.
            torch.mul(num_t, torch.reciprocal(den_t, out=inv_den[:, t]), out=y[:, t])
            torch.addcmul(x_t, decay, s, out=s)
            torch.addcmul(e_t, decay, r, out=r)
        ctx.save_for_backward(w, u, v, e, inv_den, y)
        ctx.coefficients = coefficients
        return y.view(B, T, C)

    @staticmethod
    def backward(ctx, g_y):
        w, u, v, e, inv_den, y = ctx.saved_tensors
        B, T, C = g_y.shape
        N, L, _ = e.shape
        g_y = g_y.reshape(N, L, C)
        decay, bonus = torch.exp(w), torch.exp(u)
        # The gradient of num is g_y / den. It takes over the storage of 1 / den, and step t of
        # part 3 then replaces it with g_k; likewise g_v replaces e (so autograd's version check
        # refuses a second backward through the same graph).
        g_num = inv_den.mul_(g_y)  # (N, L, C)
        g_den, x_t = e.new_empty(N, C), e.new_empty(N, C)  # g_den: minus the gradient of den

        # 1. Gradients of the carried-in states: sum_t e^{t w} (g_num_t, g_den_t), by Horner.
        g_a, g_b = e.new_zeros(N, C), e.new_zeros(N, C)
        for t in range(L - 1, -1, -1):
            torch.addcmul(g_num[:, t], decay, g_a, out=g_a)
            torch.addcmul(torch.mul(g_num[:, t], y[:, t], out=g_den), decay, g_b, out=g_b)
        # 2. ... which the scan turns into gradients of each chunk's own final sums.
        sigma, rho = _carry_backward(g_a, -g_b, ctx.coefficients)
        rho.neg_()

        # 3. Back through the chunk: sigma, rho are the gradients of s_{t+1}, -r_{t+1}.
        g_k, g_v = g_num, e
        g_x, g_e, g_bonus = e.new_empty(N, C), e.new_empty(N, C), e.new_zeros(N, C)
        for t in range(L - 1, -1, -1):
            g_num_t, e_t = g_num[:, t], e[:, t]
            torch.mul(g_num_t, y[:, t], out=g_den)
            torch.mul(e_t, v[:, t], out=x_t)
            g_bonus.addcmul_(g_num_t, x_t).addcmul_(g_den, e_t, value=-1)
            torch.addcmul(sigma, bonus, g_num_t, out=g_x)
            torch.addcmul(rho, bonus, g_den, out=g_e)  # minus the gradient of e_t
            torch.addcmul(g_num_t, decay, sigma, out=sigma)
            torch.addcmul(g_den, decay, rho, out=rho)
            torch.mul(g_x, x_t, out=g_k[:, t]).addcmul_(g_e, e_t, value=-1)
            e_t.mul_(g_x)  # g_v[:, t]

        g_u = g_bonus.sum(0) * bonus
        # y is unchanged by (w + d, u - d, k_t + t d) for any d, so dL/dw = dL/du - sum_t t dL/dk_t.
        # Positions count from the middle: sum_t dL/dk_t = 0 (y ignores a shift of all k), and
        # smaller weights lose less to cancellation.
        g_k_sum = g_k.view(B, T, C).sum(0)  # (T, C)
        pos = torch.arange(T, device=e.device, dtype=e.dtype) - (T - 1) / 2
        g_w = g_u - (g_k_sum * pos[:, None]).sum(0)
        return g_w, g_u, g_k.view(B, T, C), g_v.view(B, T, C)


def wkv_fast(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The recurrence by chunks (`_ChunkedWKV`), T padded up to a multiple of CHUNK."""
    B, T, C = k.shape
    w, u, kf, vf = w.float(), u.float(), k.float().contiguous(), v.float().contiguous()
    pad = -T % CHUNK
    if pad:
        # The padding comes after every real step, so no real output sees it; k repeats its
        # last value so that the padded steps neither set nor underflow the last chunk's scale.
        kf = torch.cat((kf, kf[:, -1:].expand(B, pad, C)), dim=1)
        vf = torch.cat((vf, vf.new_zeros(B, pad, C)), dim=1)
    return _ChunkedWKV.apply(w, u, kf, vf)[:, :T].to(v.dtype)


_dispatch = Dispatch("wkv", ENV_VAR, [Impl("chunked", wkv_fast), Impl("ref", wkv_ref)])


def wkv_impl(device: torch.device | str = "cpu") -> str:
    """The path `wkv` takes: "chunked" (the default) or "ref" (SCALING_WKV_IMPL=ref)."""
    return _dispatch.impl(device)


def wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The WKV recurrence, (C,), (C,), (B, T, C), (B, T, C) -> (B, T, C), by the path `wkv_impl()` names."""
    return _dispatch(k.device)(w, u, k, v)
