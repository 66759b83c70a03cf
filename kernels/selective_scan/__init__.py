"""Mamba's selective scan: a readable reference beside a fused C kernel and a chunked path for
CPUs, and a Triton kernel for GPUs.

The signature is mamba_ssm's `selective_scan_fn` (state-spaces/mamba:
mamba_ssm/ops/selective_scan_interface.py), without its grouped or time-invariant B and C and
without returning the last state:

    out = selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False)

u, delta, z and out are (b, d, L) = (batch, channels = the model's d_inner, time); A is (d, n);
B, C are (b, n, L); D, delta_bias are (d,). Every path computes in fp32 and returns u's dtype;
the recurrence is written out in `ref.py`.

- `selective_scan_ref`: the recurrence one step at a time, differentiated by autograd.
- `selective_scan_cpu`: the fused C kernel, vectorised over the states, rows split over
  threads; the default off CUDA (`cpu.py`, `cpu_scan.c`, built with the machine's C compiler
  on first use).
- `selective_scan_chunked`: chunks of time in PyTorch ops with a hand-written backward; bounded
  memory; the fallback off CUDA when no C compiler works (`chunked.py`).
- `selective_scan_triton`: fused Triton kernels for the forward and the backward (a reverse
  scan over saved chunk-start states); the default on CUDA when triton imports (`triton_scan.py`
  launches them, `triton_kernels.py` holds them).
- `selective_scan`: what models call. SCALING_SCAN_IMPL=ref|chunked|cpu|triton overrides the
  choice; `selective_scan_impl(device)` names it so the trainer can record it. The first call
  on each device logs the path, and warns when a CUDA tensor falls back from Triton or a CPU
  tensor from the C kernel (the convention of `kernels.dispatch`).

`scaling bench scan` times the reference against the fast CPU paths.
"""

from __future__ import annotations

from functools import cache

import torch

from kernels.cbuild import BuildError
from kernels.dispatch import Dispatch, Impl
from kernels.selective_scan.chunked import CHUNK, selective_scan_chunked
from kernels.selective_scan.cpu import library, selective_scan_cpu
from kernels.selective_scan.ref import TOLERANCES, selective_scan_ref
from kernels.selective_scan.triton_scan import TRITON_INSTALL, selective_scan_triton, triton

__all__ = [
    "CHUNK",
    "ENV_VAR",
    "TOLERANCES",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_cpu",
    "selective_scan_impl",
    "selective_scan_ref",
    "selective_scan_triton",
]

ENV_VAR = "SCALING_SCAN_IMPL"


@cache
def _c_kernel_error() -> str | None:
    """Why the C kernel cannot be used here (no compiler, a failed build), or None; asked once,
    since the dispatch runs on every call."""
    try:
        library()
    except (BuildError, OSError) as exc:
        return str(exc)
    return None


# Module globals are looked up at call time, so a test can stand in for a missing triton or compiler.
def _triton_missing() -> str | None:
    return None if triton is not None else f"triton does not import; {TRITON_INSTALL}"


def _c_kernel_missing() -> str | None:
    error = _c_kernel_error()
    return None if error is None else f"the C kernel does not build: {error}"


_dispatch = Dispatch(
    "selective_scan",
    ENV_VAR,
    [
        Impl("ref", selective_scan_ref),
        Impl("chunked", selective_scan_chunked),
        Impl("cpu", selective_scan_cpu, _c_kernel_missing),
        Impl("triton", selective_scan_triton, _triton_missing),
    ],
    prefer=("cpu", "chunked"),
    prefer_on={"cuda": ("triton", "chunked")},
)


def selective_scan_impl(device: torch.device | str) -> str:
    """The path `selective_scan` takes for tensors on `device`: SCALING_SCAN_IMPL if set; else on
    CUDA "triton" when triton imports, else "chunked"; off CUDA "cpu" when the C kernel builds,
    else "chunked"."""
    return _dispatch.impl(device)


def selective_scan(
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
    """The selective scan, (b, d, L) in u's dtype, by the path `selective_scan_impl(u.device)` names."""
    return _dispatch(u.device)(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
