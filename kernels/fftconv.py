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
- `fftconv`: what models call. It takes the fast path unless SCALING_FFTCONV_IMPL=ref asks for
  the reference; `fftconv_impl()` names the path so the trainer can record it as a tag.

`python -m kernels.fftconv --bench` checks the fast path against the reference and times both.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

ENV_VAR = "SCALING_FFTCONV_IMPL"
# Environment value -> the name recorded with a run.
_IMPLS = {"fast": "rfft", "ref": "ref"}


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


def fftconv_impl() -> str:
    """The path `fftconv` takes: "rfft" (the default) or "ref" (SCALING_FFTCONV_IMPL=ref)."""
    choice = os.environ.get(ENV_VAR) or "fast"
    if choice not in _IMPLS:
        raise ValueError(f"{ENV_VAR}={choice!r}; valid: {', '.join(_IMPLS)}")
    return _IMPLS[choice]


def fftconv(u: torch.Tensor, h: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Causal long convolution plus skip, (B, C, L) -> (B, C, L), by the path `fftconv_impl()` names."""
    if fftconv_impl() == "ref":
        return fftconv_ref(u, h, D)
    return fftconv_fast(u, h, D)


def _time_fwd_bwd(fn, u: torch.Tensor, h: torch.Tensor, D: torch.Tensor, repeats: int) -> float:
    """Best of `repeats` wall times of one forward and backward, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        args = [x.detach().requires_grad_() for x in (u, h, D)]
        start = time.perf_counter()
        fn(*args).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def _bench(B: int, C: int, L: int, ref_channels: int) -> None:
    torch.manual_seed(0)
    u, h, D = torch.randn(B, C, L), torch.randn(C, L) / L, torch.randn(C)
    # The reference's Toeplitz matrices need C * L^2 floats (8 GiB at C 512, L 2048), so it runs
    # on a slice of the channels; channels are independent, so its time scales linearly in C.
    c = min(C, ref_channels)
    err = (fftconv_fast(u[:, :c], h[:c], D[:c]) - fftconv_ref(u[:, :c], h[:c], D[:c])).abs().max()
    fast = _time_fwd_bwd(fftconv_fast, u, h, D, repeats=3)
    ref = _time_fwd_bwd(fftconv_ref, u[:, :c], h[:c], D[:c], repeats=1) * C / c
    print(f"B {B}, C {C}, L {L}, forward + backward, {torch.get_num_threads()} threads")
    print(f"max |fast - ref| on {c} channels: {err:.2e}")
    print(f"fast (rfft): {fast * 1e3:.1f} ms")
    print(f"ref (Toeplitz, timed on {c} channels, scaled x{C / c:g}): {ref * 1e3:.0f} ms ({ref / fast:.0f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="check fast against ref, then time both")
    parser.add_argument("--shape", type=int, nargs=3, default=(8, 512, 2048), metavar=("B", "C", "L"))
    parser.add_argument("--ref-channels", type=int, default=64)
    args = parser.parse_args()
    if not args.bench:
        parser.error("nothing to do: pass --bench")
    _bench(*args.shape, ref_channels=args.ref_channels)
