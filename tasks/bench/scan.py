"""Times the selective-scan paths: `scaling bench scan [--batch 8 --seq-len 2048 ...]`.

First checks the fast CPU paths against the reference on a small input (outputs and gradients),
then measures forward + backward of `selective_scan_ref`, `selective_scan_chunked` and
`selective_scan_cpu` (the fused C kernel) at the
given size (default: batch 8, L 2048, d_inner 512, d_state 16, a 350M Mamba layer's width),
with the options a Mamba layer uses (D, z, delta_bias, softplus). Inputs follow Mamba's
initialisation: A = -(1..n), softplus(delta_bias) log-uniform in [1e-3, 1e-1].

Each path runs in a fresh subprocess, so that one's allocations cannot hide the other's:
- time: best of --repeats forward + backward passes, after one warm-up pass;
- memory: the peak resident set (getrusage ru_maxrss) minus the resident set once the inputs
  exist, i.e. the most memory the passes added, activations and autograd buffers included.
With --ref-seq-len shorter than --seq-len, the reference is timed there and scaled linearly to
--seq-len (its cost is linear in L), and its memory is reported at that length.
The table's ratios are against the reference: its time over each path's, each path's memory over its.

Timings on a shared machine are noisy: --threads 1 gives the steadiest ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch

from tasks.bench.table import print_table, ratio

FAST = ("chunked", "cpu")


def mamba_inputs(b: int, d: int, L: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    """u, delta, A, B, C, D, z, delta_bias as a freshly initialised Mamba layer feeds them, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(d, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    delta_bias = dt + torch.log(-torch.expm1(-dt))  # softplus(delta_bias) = dt
    u, delta, z = torch.randn(3, b, d, L, generator=g)
    B, C = torch.randn(2, b, n, L, generator=g)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    return [x.requires_grad_() for x in (u, 0.1 * delta, A, B, C, torch.ones(d), z, delta_bias)]


def fwd_bwd(fn, inputs: list[torch.Tensor], grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = fn(*inputs, delta_softplus=True)
    return (out, *torch.autograd.grad(out, inputs, grad_out))


def check(path: str, b: int = 2, d: int = 16, L: int = 100, n: int = 16) -> float:
    """Largest error of a path against the reference, relative to each tensor's largest value."""
    from kernels import selective_scan

    inputs = mamba_inputs(b, d, L, n)
    grad_out = torch.randn(b, d, L)
    fast = fwd_bwd(getattr(selective_scan, f"selective_scan_{path}"), inputs, grad_out)
    ref = fwd_bwd(selective_scan.selective_scan_ref, inputs, grad_out)
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(fast, ref))


def worker(path: str, b: int, d: int, L: int, n: int, repeats: int) -> dict:
    """Runs in the subprocess: time and peak memory of one path."""
    from kernels import selective_scan

    fn = getattr(selective_scan, f"selective_scan_{path}")
    inputs = mamba_inputs(b, d, L, n)
    grad_out = torch.randn(b, d, L)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fwd_bwd(fn, inputs, grad_out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fwd_bwd(fn, inputs, grad_out)
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": min(times), "peak_mib": (peak_kib - base_kib) / 1024}


def run_path(path: str, args: argparse.Namespace, L: int) -> dict:
    """One path's time and memory, measured in a fresh `scaling bench scan --worker` process."""
    flags = {
        "--worker": path,
        "--batch": args.batch,
        "--seq-len": L,
        "--d-inner": args.d_inner,
        "--d-state": args.d_state,
        "--repeats": args.repeats,
        "--threads": args.threads,
    }
    cmd = [sys.executable, "-m", "tasks.bench", "scan", *(str(x) for kv in flags.items() for x in kv)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scaling bench scan", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--d-inner", type=int, default=512)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-seq-len", type=int, default=None, help="time the reference at this L and scale")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--worker", choices=["ref", *FAST], help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.d_inner, args.seq_len, args.d_state, args.repeats)))
        return 0

    errors = [[path, f"{check(path):.1e}"] for path in FAST]
    print_table("fast paths vs ref on a small input, outputs and all 8 gradients", ["path", "max rel error"], errors)
    L, ref_L = args.seq_len, args.ref_seq_len or args.seq_len
    ref = run_path("ref", args, ref_L)
    ref_s, ref_mib = ref["seconds"] * L / ref_L, ref["peak_mib"]
    rows = [["ref", ref_L, f"{ref_s:.3f}", f"{ref_mib:.0f}", ratio(ref_s, ref_s), ratio(ref_mib, ref_mib)]]
    for path in FAST:
        fast = run_path(path, args, L)
        # The reference's memory at a shorter L says nothing about a ratio at L.
        memory = ratio(fast["peak_mib"], ref_mib) if ref_L == L else "-"
        rows.append(
            [path, L, f"{fast['seconds']:.3f}", f"{fast['peak_mib']:.0f}", ratio(ref_s, fast["seconds"]), memory]
        )
    scaled = f"; ref timed at L {ref_L}, its time scaled x{L / ref_L:g} to L {L}" if ref_L != L else ""
    print_table(
        f"batch {args.batch}, L {L}, d_inner {args.d_inner}, d_state {args.d_state}, {args.threads} threads; "
        f"forward + backward, best of {args.repeats}; memory = peak RSS added by the passes{scaled}",
        ["path", "timed at L", "seconds", "peak MiB", "speed-up vs ref", "memory vs ref"],
        rows,
    )
    return 0
