"""Causal self-attention: a readable reference beside PyTorch's fused path.

Shapes: q, k, v and the output are (B, H, T, Dh) = (batch, heads, time, head dim).
Keys and queries cover the same positions (training-time self-attention, no KV cache).

- `attention_ref`: the textbook masked softmax(Q K^T / sqrt(Dh)) V (Vaswani et al. 2017,
  eq. 1, https://arxiv.org/abs/1706.03762), computed in fp32.
- `attention_fast`: `torch.nn.functional.scaled_dot_product_attention`, which dispatches to
  FlashAttention-2, memory-efficient or cuDNN kernels on GPUs and a fused flash kernel on CPU.
- `attention`: what models call. It takes the fast path ("sdpa") unless the environment variable
  SCALING_ATTENTION_IMPL=ref asks for the reference (to debug a model against the textbook
  formula); `attention_impl()` names the path so the trainer can record it as a tag. The
  convention, shared by every operator, is `kernels.dispatch`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.dispatch import Dispatch, Impl

ENV_VAR = "SCALING_ATTENTION_IMPL"


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention as written in the paper; fp32 inside, returned in the input dtype."""
    T, Dh = q.shape[-2:]
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(Dh)  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)  # (B, H, T, Dh)


def attention_fast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention through PyTorch's fused SDPA kernels (FlashAttention on GPUs)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)


_dispatch = Dispatch("attention", ENV_VAR, [Impl("sdpa", attention_fast), Impl("ref", attention_ref)])


def attention_impl(device: torch.device | str = "cpu") -> str:
    """The path `attention` takes: "sdpa" (the default) or "ref" (SCALING_ATTENTION_IMPL=ref)."""
    return _dispatch.impl(device)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention, (B, H, T, Dh) -> (B, H, T, Dh), by the path `attention_impl()` names."""
    return _dispatch(q.device)(q, k, v)
