"""Times the WKV paths: `scaling bench wkv [--batch 8 --seq-len 1024 --channels 512]`.

First checks the fast path against the reference on a small input (outputs and gradients),
then times forward + backward of each at the given size, best of --repeats. Inputs follow
RWKV-4's initialisation (kernels.wkv's docstring has the recurrence). The reference runs T
steps one after another; when a probe says it would take longer than --ref-budget seconds, it
is timed at a shorter length and scaled linearly to T (its cost is linear in T), and the
report says so. The speed-up is against the reference: its time over the fast path's.

Timings on a shared machine are noisy: --threads 1 gives the steadiest ratio; with more
threads than free cores, every parallel op waits for the busiest core.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from kernels.wkv import CHUNK, wkv_fast, wkv_ref
from tasks.bench.table import print_table, ratio


def rwkv_inputs(B: int, T: int, C: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """w, u, k, v as an RWKV-4 layer sees them at initialisation, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    time_decay = -5 + 8 * torch.rand(C, generator=g)  # the range of RWKV-4's time_decay init
    w = -torch.exp(time_decay)
    u = math.log(0.3) + 0.5 * (torch.arange(C) % 3 - 1)  # time_first's zigzag
    k, v = torch.randn(2, B, T, C, generator=g)
    return tuple(x.float().requires_grad_() for x in (w, u, k, v))


def time_fwd_bwd(fn, B: int, T: int, C: int) -> float:
    """Wall time of one forward + backward, in seconds."""
    inputs = rwkv_inputs(B, T, C)
    g_y = torch.randn(B, T, C)
    start = time.perf_counter()
    torch.autograd.grad(fn(*inputs), inputs, g_y)
    return time.perf_counter() - start


def check(B: int = 2, T: int = 3 * CHUNK + 5, C: int = 64) -> dict[str, float]:
    """Largest |fast - ref| of the output and of each gradient, relative to the ref's largest value."""
    inputs = rwkv_inputs(B, T, C, seed=1)
    g_y = torch.randn(B, T, C)
    errors = {}
    fast, ref = (fn(*inputs) for fn in (wkv_fast, wkv_ref))
    grads = zip(torch.autograd.grad(fast, inputs, g_y), torch.autograd.grad(ref, inputs, g_y))
    for name, (a, b) in zip(("y", "dw", "du", "dk", "dv"), [(fast, ref), *grads]):
        errors[name] = ((a - b).abs().max() / b.abs().max()).item()
    return errors


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scaling bench wkv", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-budget", type=float, default=60.0, help="seconds the reference may take at full length")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    B, T, C = args.batch, args.seq_len, args.channels

    errors = check()
    print_table(
        "fast vs ref on a small input, max relative error",
        ["", *errors],
        [["fast", *(f"{e:.1e}" for e in errors.values())]],
    )

    time_fwd_bwd(wkv_fast, B, T, C)  # warm-up: first calls pay for allocations and lazy init
    probe_T = min(T, 4 * CHUNK)
    probe = time_fwd_bwd(wkv_ref, B, probe_T, C) * T / probe_T
    ref_T = T if probe <= args.ref_budget else max(probe_T, int(T * args.ref_budget / probe) // CHUNK * CHUNK)
    # Alternating the two spreads a change in the machine's load over both.
    fast = ref = math.inf
    for _ in range(args.repeats):
        ref = min(ref, time_fwd_bwd(wkv_ref, B, ref_T, C) * T / ref_T)
        fast = min(fast, time_fwd_bwd(wkv_fast, B, T, C))
    note = "" if ref_T == T else f"; ref timed at T={ref_T}, its time scaled x{T / ref_T:.1f} to T={T}"
    print_table(
        f"B={B} T={T} C={C}, {torch.get_num_threads()} threads, forward + backward, best of {args.repeats}{note}",
        ["path", "timed at T", "ms", "speed-up vs ref"],
        [["ref", ref_T, f"{ref * 1e3:.1f}", ratio(ref, ref)], ["fast", T, f"{fast * 1e3:.1f}", ratio(ref, fast)]],
    )
    return 0
