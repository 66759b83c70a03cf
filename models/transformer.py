"""The Transformer baselines of the Mamba scaling-law study (Gu & Dao 2023, §4.2, App. E.2.1).

https://arxiv.org/abs/2312.00752. Two variants, named as the architectures of a sweep, share
this file because they differ only in their parts, not in their shape:

- "transformer": the GPT-3 Transformer (Brown et al. 2020, https://arxiv.org/abs/2005.14165):
  learned absolute positions, LayerNorm, GELU MLP of width 4 * D, biases on every linear layer.
- "transformer++": Transformer++ as the Mamba paper defines it: rotary position embeddings
  (Su et al. 2021, https://arxiv.org/abs/2104.09864), SwiGLU MLP (Shazeer 2020,
  https://arxiv.org/abs/2002.05202), RMSNorm, no linear biases.

Both: pre-norm blocks, and the shell of `models.shell` (input embedding tied to the LM head,
vocabulary padded to a multiple of 8, a final norm); no dropout, GPT-2 initialisation (std 0.02,
residual output projections scaled by 1 / sqrt(2 * n_layer)).

Choices the paper leaves open, taken from the authors' code:
- SwiGLU hidden width: 8 * D / 3 rounded up to a multiple of 128, as mamba_ssm's GatedMLP
  (state-spaces/mamba: mamba_ssm/modules/mlp.py). Below D = 256 that multiple would inflate
  the MLP (D = 64 would get 4 * D), so small models round to a multiple of 8 instead.
- Rotary on the full head dimension, GPT-NeoX layout (halves, not interleaved pairs), base 10000.
- Norm eps 1e-5; GELU with the tanh approximation, as GPT-2.

Dimensions in shape comments: B batch, T time, D d_model, H heads, Dh = D / H head dim,
V padded vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.attention import attention
from models.shell import ShellConfig, TiedLM

VARIANTS = ("transformer", "transformer++")


@dataclass(frozen=True)
class TransformerConfig(ShellConfig):
    vocab_size: int
    """Tokenizer vocabulary; the embedding has `padded_vocab` rows."""
    n_layer: int
    d_model: int
    n_head: int
    seq_len: int
    """Longest sequence the model accepts (the size of the learned position table of "transformer")."""
    variant: Literal["transformer", "transformer++"] = "transformer"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        self._require_positive("vocab_size", "n_layer", "d_model", "n_head", "seq_len")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.variant == "transformer++" and self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_mlp(self) -> int:
        """Hidden width of the MLP (for Transformer++, of each of the two SwiGLU input projections)."""
        if self.variant == "transformer":
            return 4 * self.d_model
        multiple = 128 if self.d_model >= 256 else 8
        return -(-int(8 * self.d_model / 3) // multiple) * multiple

    def _n_linear_weights(self) -> int:
        """Weights of the matmuls in one block (no biases): qkv + out projection + MLP."""
        D = self.d_model
        mlp = 2 * D * self.d_mlp if self.variant == "transformer" else 3 * D * self.d_mlp
        return 4 * D * D + mlp

    def n_params_nonembed(self) -> int:
        """Parameters without the token and ("transformer") position embeddings: blocks plus final norm."""
        D = self.d_model
        if self.variant == "transformer":
            biases = 3 * D + D + self.d_mlp + D
            norms = 2 * 2 * D  # two LayerNorms with weight and bias
            return self.n_layer * (self._n_linear_weights() + biases + norms) + 2 * D
        return self.n_layer * (self._n_linear_weights() + 2 * D) + D

    def _n_position_params(self) -> int:
        return self.seq_len * self.d_model if self.variant == "transformer" else 0

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token at context `seq_len` (default: the config's).

        The matmul count of Chinchilla App. F (Hoffmann et al. 2022), backward = 2 x forward:
        6 x (block matmul weights) + 6 x D x V (LM head) + 12 x n_layer x seq_len x D (Q K^T and
        A V, 2 x T x D each per token forward, no causal halving, although causal FlashAttention
        skips about half of that work). Unlike App. F, the embedding lookup is not counted as a
        matmul (it is a gather), nor are softmax, norms, activations, rotary and biases. This is
        exactly what PyTorch's FlopCounterMode reports when attention runs as counted matmuls.
        """
        T = self.seq_len if seq_len is None else seq_len
        D = self.d_model
        return 6 * self.n_layer * self._n_linear_weights() + 6 * D * self.padded_vocab + 12 * self.n_layer * T * D


def rotary_tables(T: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (T, Dh/2) each, in fp32 whatever the model dtype."""
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)  # (T, Dh/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, Dh/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)  # (B, H, T, Dh)


def make_norm(config: TransformerConfig) -> nn.Module:
    if config.variant == "transformer":
        return nn.LayerNorm(config.d_model, eps=1e-5)
    return nn.RMSNorm(config.d_model, eps=1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        bias = config.variant == "transformer"
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, D // self.n_head)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, Dh) each
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = attention(q, k, v)  # (B, H, T, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class MLP(nn.Module):
    """GELU MLP ("transformer") or SwiGLU ("transformer++"): fc widens to d_mlp (twice, for the
    gate), proj narrows back."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.gated = config.variant == "transformer++"
        bias = not self.gated
        self.fc = nn.Linear(config.d_model, (2 if self.gated else 1) * config.d_mlp, bias=bias)
        self.proj = nn.Linear(config.d_mlp, config.d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, T, d_mlp), or (B, T, 2 * d_mlp) when gated
        if self.gated:
            h, gate = h.chunk(2, dim=-1)
            h = h * F.silu(gate)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.proj(h)  # (B, T, D)


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))  # (B, T, D)


class Transformer(TiedLM):
    def __init__(self, config: TransformerConfig):
        # Learned positions for "transformer"; "transformer++" rotates q and k in attention instead.
        pos_embed = nn.Embedding(config.seq_len, config.d_model) if config.variant == "transformer" else None
        blocks = (Block(config) for _ in range(config.n_layer))
        super().__init__(config, blocks, make_norm(config), pos_embed=pos_embed)

    def _init_parameters(self) -> None:
        """GPT-2 initialisation, by parameter name."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
            elif name.endswith("proj.weight"):
                # Each block adds two residual outputs; scaling keeps the stream's variance flat in depth.
                p.normal_(0.0, residual_std)
            else:
                p.normal_(0.0, 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for tokens (B, T); T may not exceed config.seq_len."""
        T = tokens.shape[1]
        self._check_length(T)
        x = self.embed(tokens)  # (B, T, D)
        rope = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(T, device=tokens.device))
        else:
            rope = rotary_tables(T, self.config.head_dim, tokens.device)
        for block in self.blocks:
            x = block(x, rope)
        return self._logits(x)  # (B, T, V)
