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
  scan over saved chunk-start states); the default on CUDA when triton imports (`triton_scan.py`).
- `selective_scan`: what models call. SCALING_SCAN_IMPL=ref|chunked|cpu|triton overrides the
  choice; `selective_scan_impl(device)` names it so the trainer can record it. The first call
  on each device logs the path, and warns when a CUDA tensor falls back from Triton or a CPU
  tensor from the C kernel.

`python -m kernels.bench_selective_scan` times the reference against the fast CPU paths.
"""

from __future__ import annotations

import logging
import os
import warnings
from functools import cache

import torch

from kernels.cbuild import BuildError
from kernels.selective_scan.chunked import CHUNK, selective_scan_chunked
from kernels.selective_scan.cpu import library, selective_scan_cpu
from kernels.selective_scan.ref import selective_scan_ref
from kernels.selective_scan.triton_scan import TRITON_INSTALL, selective_scan_triton, triton

__all__ = [
    "CHUNK",
    "ENV_VAR",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_cpu",
    "selective_scan_impl",
    "selective_scan_ref",
    "selective_scan_triton",
]

log = logging.getLogger(__name__)

ENV_VAR = "SCALING_SCAN_IMPL"
_IMPLS = {
    "ref": selective_scan_ref,
    "chunked": selective_scan_chunked,
    "cpu": selective_scan_cpu,
    "triton": selective_scan_triton,
}
_announced: set[tuple[str, str]] = set()
"""(device type, path) pairs already logged; tests clear it to see the message again."""


@cache
def _c_kernel_error() -> str | None:
    """Why the C kernel cannot be used here (no compiler, a failed build), or None; asked once,
    since the dispatch runs on every call."""
    try:
        library()
    except (BuildError, OSError) as exc:
        return str(exc)
    return None


def selective_scan_impl(device: torch.device | str) -> str:
    """The path `selective_scan` takes for tensors on `device`: SCALING_SCAN_IMPL if set; else on
    CUDA "triton" when triton imports, else "chunked"; off CUDA "cpu" when the C kernel builds,
    else "chunked"."""
    choice = os.environ.get(ENV_VAR)
    if choice:
        if choice not in _IMPLS:
            raise ValueError(f"{ENV_VAR}={choice!r}; valid: {', '.join(_IMPLS)}")
        if choice == "triton" and triton is None:
            raise RuntimeError(f"{ENV_VAR}=triton, but triton does not import; {TRITON_INSTALL}")
        if choice == "cpu" and (error := _c_kernel_error()):
            raise RuntimeError(f"{ENV_VAR}=cpu, but the C kernel does not build: {error}")
        return choice
    if torch.device(device).type == "cuda":
        return "triton" if triton is not None else "chunked"
    return "cpu" if _c_kernel_error() is None else "chunked"


def _announce(device: torch.device, impl: str) -> None:
    if (device.type, impl) in _announced:
        return
    _announced.add((device.type, impl))
    if impl == "chunked" and not os.environ.get(ENV_VAR):
        why = f"triton does not import; {TRITON_INSTALL}" if device.type == "cuda" else _c_kernel_error()
        warnings.warn(
            f"selective_scan: {device.type} tensors take the chunked PyTorch path, several times slower: {why}",
            RuntimeWarning,
            stacklevel=3,
        )
    else:
        log.info("selective_scan: the %s path on %s", impl, device.type)


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
    impl = selective_scan_impl(u.device)
    _announce(u.device, impl)
    return _IMPLS[impl](u, delta, A, B, C, D, z, delta_bias, delta_softplus)
