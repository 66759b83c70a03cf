"""The selective scan as one fused C kernel per direction: the fast path on CPUs.

`cpu_scan.c` runs the recurrence of `ref.py` one (batch, channel) row at a time with the
state in registers, vectorised over the n states; its header gives the layouts and the
backward. This module builds it (`kernels.cbuild`, once per machine), splits the b * d rows
over torch's intra-op thread count (ctypes drops the GIL, so Python threads run the rows in
parallel) and wraps both directions in an autograd Function. The bias, softplus, D skip and
z gate stay in PyTorch around it, as in the chunked path.

Memory: besides the (b, d, L) inputs and outputs, the forward keeps the state before every
chunk of CHUNK steps, b * d * n * ceil(L / CHUNK) floats, and time-major copies of B and C;
the backward adds per-thread accumulators for dB and dC (b * L * n each) and dA, and a
(2 CHUNK + 1) * n scratch per thread. Nothing of size (b, d, L, n) exists at any time.

Why a C kernel rather than PyTorch ops: every PyTorch formulation (`chunked.py`) makes
several passes over (b, d, chunk, n) buffers in memory, while the fused loop touches each
state once, in registers, and evaluates exp on 16 lanes at a time.
"""

from __future__ import annotations

import ctypes
import itertools
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

from kernels.cbuild import load

CHUNK = 64
"""Steps between saved states: the backward recomputes at most this many steps of a row, whose
decays and states (2 * 64 * 16 floats at d_state 16) stay in the L1 cache."""

SOURCE = Path(__file__).with_name("cpu_scan.c")
_F = ctypes.c_void_p
_L = ctypes.c_long


@cache
def library() -> ctypes.CDLL:
    """The compiled kernel; raises `kernels.cbuild.BuildError` if there is no working C compiler."""
    lib = load(SOURCE)
    lib.scan_forward.argtypes = [_F] * 8 + [ctypes.c_int] + [_F] * 3 + [_L] * 6
    lib.scan_backward.argtypes = [_F] * 8 + [ctypes.c_int] + [_F] * 11 + [_L] * 6
    return lib


def _row_ranges(rows: int) -> list[tuple[int, int]]:
    parts = max(1, min(torch.get_num_threads(), rows))
    bounds = [rows * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def _in_threads(call, ranges: list[tuple[int, int]]) -> None:
    if len(ranges) == 1:
        call(0, *ranges[0])
        return
    with ThreadPoolExecutor(len(ranges)) as pool:
        list(pool.map(lambda i: call(i, *ranges[i]), range(len(ranges))))


def _ptr(x: torch.Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _fp32(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.float().contiguous()


class _CpuScan(torch.autograd.Function):
    """`selective_scan_ref` with its backward, each direction one call of the C kernel per thread."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        lib = library()
        b, d, L = u.shape
        n = A.shape[1]
        u32, delta, A, D, z, delta_bias = (_fp32(x) for x in (u, delta, A, D, z, delta_bias))
        Bt, Ct = (_fp32(x.transpose(1, 2)) for x in (B, C))  # (b, L, n)
        out = u32.new_empty(b, d, L)
        starts = u32.new_empty(b, d, -(-L // CHUNK), n)
        args = [_ptr(x) for x in (u32, delta, A, Bt, Ct, D, z, delta_bias)]
        args += [int(delta_softplus), _ptr(out), _ptr(starts)]
        ranges = _row_ranges(b * d)
        scratch = u32.new_empty(len(ranges), L)

        def rows(i, r0, r1):
            lib.scan_forward(*args, scratch[i].data_ptr(), r0, r1, d, L, n, CHUNK)

        _in_threads(rows, ranges)
        ctx.delta_softplus = delta_softplus
        ctx.dtypes = [None if x is None else x.dtype for x in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.save_for_backward(u32, delta, A, Bt, Ct, D, z, delta_bias, starts)
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        lib = library()
        u, delta, A, Bt, Ct, D, z, delta_bias, starts = ctx.saved_tensors
        b, d, L = u.shape
        n = A.shape[1]
        ranges = _row_ranges(b * d)
        threads = len(ranges)
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(u)
        grad_z = None if z is None else torch.empty_like(u)
        grad_A = A.new_zeros(threads, d, n)
        grad_Bt, grad_Ct = (u.new_zeros(threads, b, L, n) for _ in range(2))
        grad_D = None if D is None else D.new_zeros(threads, d)
        grad_bias = None if delta_bias is None else delta_bias.new_zeros(threads, d)
        scratch = u.new_empty(threads, (2 * CHUNK + 1) * n + 4 * L)
        shared = [_ptr(x) for x in (u, delta, A, Bt, Ct, D, z, delta_bias)] + [int(ctx.delta_softplus)]
        grad_out = _fp32(grad_out)  # held here: the kernel gets only its pointer
        shared += [_ptr(x) for x in (starts, grad_out, grad_u, grad_delta, grad_z)]

        per_thread = (grad_A, grad_Bt, grad_Ct, grad_D, grad_bias, scratch)

        def rows(i, r0, r1):
            own = [None if x is None else x[i].data_ptr() for x in per_thread]
            lib.scan_backward(*shared, *own, r0, r1, d, L, n, CHUNK)

        _in_threads(rows, ranges)
        grads = [
            grad_u,
            grad_delta,
            grad_A.sum(0),
            grad_Bt.sum(0).transpose(1, 2),
            grad_Ct.sum(0).transpose(1, 2),
            None if D is None else grad_D.sum(0),
            grad_z,
            None if delta_bias is None else grad_bias.sum(0),
        ]
        return (*(None if g is None else g.to(dt) for g, dt in zip(grads, ctx.dtypes)), None)


def selective_scan_cpu(
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
    """`selective_scan_ref`'s result from the fused C kernel, in fp32; (b, d, L) in u's dtype.
    CPU tensors only."""
    if u.device.type != "cpu":
        raise ValueError(f"selective_scan_cpu takes CPU tensors, got {u.device}; use selective_scan to dispatch")
    return _CpuScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
