"""Causal long convolution with a skip term: a readable reference beside the FFT path.

Shapes: u and the output are (B, C, L) = (batch, channels, time); h is (C, L), one causal
filter per channel as long as the sequence; D is (C,), a per-channel skip.

    y[b, c, t] = sum_{s <= t} h[c, t - s] * u[b, c, s] + D[c] * u[b, c, t]

This is the long convolution of Hyena (Poli et al. 2023, eq. 3, https://arxiv.org/abs/2302.10866),
with the "bias" term of safari's `fftconv_ref` (HazyResearch/safari:
src/models/sequence/hyena.py) as D. Both paths compute in fp32 and round once to u's dtype.

- `fftconv_ref`: the sum above, written as a (L x L) lower-triangular Toeplitz matrix per
  channel. O(L^2) time and O(C L^2) memory: a test oracle, not for training lengths.
- `fftconv_fast`: the convolution theorem with torch.fft, O(L log L). Zero padding to 2L makes
  the FFT's circular convolution equal the linear one on the first L outputs, so nothing from
  the future wraps around into the past.
- `fftconv`: what models call. It takes the fast path ("rfft") unless SCALING_FFTCONV_IMPL=ref
  asks for the reference; `fftconv_impl()` names the path so the trainer can record it as a tag
  (the convention of `kernels.dispatch`).

`scaling bench fftconv` checks the fast path against the reference and times both.
"""

from __future__ import annotations

import torch

from kernels.dispatch import Dispatch, Impl

ENV_VAR = "SCALING_FFTCONV_IMPL"


def fftconv_ref(u: torch.Tensor, h: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """The causal convolution as a matrix product, y = T_c u + D u with T_c[t, s] = h[c, t - s]."""
    L = u.shape[-1]
    t = torch.arange(L, device=u.device)
    lag = t[:, None] - t[None, :]  # (L, L): t - s
    toeplitz = torch.where(lag >= 0, h.float()[:, lag.clamp(min=0)], 0.0)  # (C, L, L), zero for s > t
    y = torch.einsum("cts,bcs->bct", toeplitz, u.float())  # (B, C, L)
    return (y + D.float()[:, None] * u.float()).to(u.dtype)


def fftconv_fast(u: torch.Tensor, h: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """The causal convolution through real FFTs of size 2L."""
    L = u.shape[-1]
    n = 2 * L
    h_f = torch.fft.rfft(h.float(), n=n)  # (C, L + 1)
    u_f = torch.fft.rfft(u.float(), n=n)  # (B, C, L + 1)
    y = torch.fft.irfft(u_f * h_f, n=n)[..., :L]  # (B, C, L)
    return (y + D.float()[:, None] * u.float()).to(u.dtype)


_dispatch = Dispatch("fftconv", ENV_VAR, [Impl("rfft", fftconv_fast), Impl("ref", fftconv_ref)])


def fftconv_impl(device: torch.device | str = "cpu") -> str:
    """The path `fftconv` takes: "rfft" (the default) or "ref" (SCALING_FFTCONV_IMPL=ref)."""
    return _dispatch.impl(device)


def fftconv(u: torch.Tensor, h: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Causal long convolution plus skip, (B, C, L) -> (B, C, L), by the path `fftconv_impl()` names."""
    return _dispatch(u.device)(u, h, D)
