"""Times Hyena's long convolution: `scaling bench fftconv [--shape 8 512 2048 --ref-channels 64]`.

First checks the fast path (`kernels.fftconv.fftconv_fast`, rfft of size 2L) against the reference
(`fftconv_ref`, a Toeplitz matrix per channel) on a slice of the channels, then times one forward +
backward of each at (B, C, L): the fast path best of 3, the reference once. The reference's Toeplitz
matrices need C * L^2 floats (8 GiB at C 512, L 2048), so it runs on --ref-channels of the channels;
channels are independent, so its time is scaled linearly to C, and the table says so. The speed-up is
against the reference: its time over the fast path's.
"""

from __future__ import annotations

import argparse
import time

import torch

from kernels.fftconv import fftconv_fast, fftconv_ref
from tasks.bench.table import print_table, ratio


def time_fwd_bwd(fn, u: torch.Tensor, h: torch.Tensor, D: torch.Tensor, repeats: int) -> float:
    """Best of `repeats` wall times of one forward and backward, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        args = [x.detach().requires_grad_() for x in (u, h, D)]
        start = time.perf_counter()
        fn(*args).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scaling bench fftconv", description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(8, 512, 2048), metavar=("B", "C", "L"))
    ap.add_argument("--ref-channels", type=int, default=64, help="channels the reference runs on (default 64)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    B, C, L = args.shape
    torch.manual_seed(0)
    u, h, D = torch.randn(B, C, L), torch.randn(C, L) / L, torch.randn(C)
    c = min(C, args.ref_channels)
    err = (fftconv_fast(u[:, :c], h[:c], D[:c]) - fftconv_ref(u[:, :c], h[:c], D[:c])).abs().max()
    print_table(f"fast vs ref on {c} channels", ["", "max |fast - ref|"], [["fast", f"{err:.2e}"]])

    fast = time_fwd_bwd(fftconv_fast, u, h, D, repeats=3)
    ref = time_fwd_bwd(fftconv_ref, u[:, :c], h[:c], D[:c], repeats=1) * C / c
    note = f"; ref timed on {c} channels, its time scaled x{C / c:g}" if c != C else ""
    print_table(
        f"B {B}, C {C}, L {L}, forward + backward, {torch.get_num_threads()} threads{note}",
        ["path", "timed on C", "ms", "speed-up vs ref"],
        [
            ["ref (Toeplitz)", c, f"{ref * 1e3:.1f}", ratio(ref, ref)],
            ["fast (rfft)", C, f"{fast * 1e3:.1f}", ratio(ref, fast)],
        ],
    )
    return 0
