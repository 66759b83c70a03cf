"""The selective scan on CUDA, for `scaling bench gpu`: the Triton kernels against the reference (the output
and all 8 gradients, fp32 and bf16) and their forward + backward time against the chunked PyTorch path.

Imports only torch, kernels/ and tasks.bench (scan's inputs, the tables): it runs on a GPU image as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from kernels.selective_scan import (
    TOLERANCES,
    selective_scan_chunked,
    selective_scan_ref,
    selective_scan_triton,
)
from tasks.bench.scan import fwd_bwd, mamba_inputs
from tasks.bench.table import print_table, ratio

NAMES = ("output", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")
ACTIVATIONS = (0, 1, 3, 4, 6)
"""u, delta, B, C, z: in the model's dtype; A, D and delta_bias stay fp32, as a Mamba layer keeps them."""


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], object], device: str, warmup: int, reps: int) -> float:
    """Mean wall time of `fn` over `reps` calls after `warmup` (the first compiles Triton's kernels)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / reps


def inputs_on(shape: tuple[int, int, int, int], dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    """mamba_inputs at (b, L, d, n), the activations in `dtype`, all on `device` and requiring grad."""
    b, L, d, n = shape
    cpu = mamba_inputs(b, d, L, n)
    return [
        x.detach().to(device, dtype if i in ACTIVATIONS else torch.float32).requires_grad_() for i, x in enumerate(cpu)
    ]


def errors(shape: tuple[int, int, int, int], dtype: torch.dtype, device: str) -> list[float]:
    """Each of the 9 tensors' largest error against the reference, relative to its largest value (floored at
    1), the measure the kernel tests hold every path to (tests/kernels/scan_cases.py)."""
    inputs = inputs_on(shape, dtype, device)
    grad_out = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    fast = fwd_bwd(selective_scan_triton, inputs, grad_out)
    ref = fwd_bwd(selective_scan_ref, inputs, grad_out)
    return [
        ((x.float() - y.float()).abs().max() / max(y.float().abs().max().item(), 1.0)).item() for x, y in zip(fast, ref)
    ]


def check(shape: tuple[int, int, int, int], device: str) -> bool:
    """The error table; whether every tensor is within the tests' tolerance in both dtypes."""
    rows, ok = [], True
    for dtype in (torch.float32, torch.bfloat16):
        errs = errors(shape, dtype, device)
        within = max(errs) <= TOLERANCES[dtype]
        ok &= within
        rows.append([str(dtype).removeprefix("torch."), *(f"{e:.1e}" for e in errs), "yes" if within else "NO"])
    print_table(
        f"Triton scan vs the reference at (b, L, d, n) = {shape}: largest error / largest value, per tensor; "
        f"tolerance fp32 {TOLERANCES[torch.float32]:g}, bf16 {TOLERANCES[torch.bfloat16]:g}",
        ["dtype", *NAMES, "within"],
        rows,
    )
    return ok


def speed(shapes: list[tuple[int, int, int, int]], device: str, warmup: int, reps: int) -> list[float]:
    """Forward + backward, bf16 activations: the chunked path (the baseline) against Triton; Triton's
    speed-up at each shape."""
    rows, speedups = [], []
    for shape in shapes:
        inputs = inputs_on(shape, torch.bfloat16, device)
        grad_out = torch.ones_like(inputs[0])
        times = {}
        for name, fn in (("chunked", selective_scan_chunked), ("triton", selective_scan_triton)):
            times[name] = seconds_per_call(lambda fn=fn: fwd_bwd(fn, inputs, grad_out), device, warmup, reps)
            rows.append([f"{name} {shape}", f"{times[name] * 1e3:.2f}", ratio(times["chunked"], times[name])])
        speedups.append(times["chunked"] / times["triton"])
    print_table(
        f"selective scan forward + backward, bf16 activations, mean of {reps} after {warmup} warm-up",
        ["path (b, L, d, n)", "ms", "speed-up vs chunked"],
        rows,
    )
    return speedups
