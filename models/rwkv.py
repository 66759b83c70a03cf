"""RWKV-4 ("v4neo"), the RWKV baseline of the Mamba scaling-law study (Gu & Dao 2023, Figure 4).

Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", https://arxiv.org/abs/2305.13048,
as implemented in BlinkDL/RWKV-LM: RWKV-v4neo/src/model.py (read at commit 038f06b; the Mamba
paper trains "the default RWKV-4 model, including its modified MLP"). Features:

- Time mixing: token shift (a learned per-channel mix of x_t and x_{t-1}) feeds the key, value
  and receptance projections; the WKV recurrence (kernels.wkv) with a learned per-channel decay
  w = -exp(time_decay) and bonus u = time_first for the current token; output
  W_o(sigmoid(r) * wkv).
- Channel mixing, the "modified MLP": token shift, key D -> 4D with squared ReLU, value 4D -> D,
  gated by sigmoid(receptance D -> D).
- Pre-norm blocks x + TimeMix(LN(x)), x + ChannelMix(LN(x)); a LayerNorm after the embedding
  (RWKV's ln0) and a final one; no biases, no dropout, no position embedding.
- RWKV-4's initialisation: time_decay, time_first and the mixing ratios by channel and depth;
  zero key, receptance and output projections in time mixing and zero value and receptance in
  channel mixing, so that every block starts as the identity; the others orthogonal.

Deviations from RWKV-LM, for the study's uniformity with the other architectures:
- The shell of `models.shell`: the embedding is tied to the LM head (RWKV unties them) and the
  vocabulary is padded to a multiple of 8. The tied matrix takes the head's init (orthogonal, gain 0.5); RWKV inits the
  embedding alone uniform in +-lr_init, a scale that ln0 removes on the input side.
- No L2Wrap (RWKV's extra loss gradient that pulls the largest logit towards 0) and no head_qk.
- The trainer's optimizer groups apply: `no_weight_decay()` names the time_* parameters, as
  RWKV's layerwise_lr groups exempt them; their 2x / 3x learning rates are not reproduced.

Dimensions in shape comments: B batch, T time, D d_model, V padded vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.wkv import wkv
from models.shell import ShellConfig, TiedLM

WKV_FLOPS_PER_CHANNEL = 23
"""Forward FLOPs of one WKV step for one channel: the operations of RWKV-v4/cuda/wkv_cuda.cu's
forward loop (adds, maxima, subtractions, exps, multiplies, one division), each counted as 1."""


@dataclass(frozen=True)
class RWKVConfig(ShellConfig):
    vocab_size: int
    """Tokenizer vocabulary; the embedding has `padded_vocab` rows."""
    n_layer: int
    d_model: int
    seq_len: int
    """Training context. Nothing is sized by it (RWKV has no position table); FLOPs use it."""

    @classmethod
    def for_size(cls, size: Mapping[str, Any], vocab_size: int, seq_len: int) -> RWKVConfig:
        """The config at a Transformer ladder size: its n_layer and d_model as they are, heads
        ignored, so a layer holds 13 D^2 weights against the Transformer's 12 D^2."""
        return cls(vocab_size=vocab_size, n_layer=size["n_layer"], d_model=size["d_model"], seq_len=seq_len)

    def __post_init__(self):
        self._require_positive("vocab_size", "n_layer", "d_model", "seq_len")

    @property
    def d_ffn(self) -> int:
        """Hidden width of channel mixing (RWKV-4: 4 * D)."""
        return 4 * self.d_model

    def _n_linear_weights(self) -> int:
        """Matmul weights of one block: key, value, receptance, output (4 D^2) in time mixing,
        key and value (2 D d_ffn) and receptance (D^2) in channel mixing."""
        D = self.d_model
        return 5 * D * D + 2 * D * self.d_ffn

    def n_params_nonembed(self) -> int:
        """Parameters without the token embedding: blocks, ln0 and the final norm."""
        D = self.d_model
        per_channel = 5 + 2 + 4  # time_decay, time_first, 3 time mixes; 2 channel mixes; 2 LayerNorms
        return self.n_layer * (self._n_linear_weights() + per_channel * D) + 2 * 2 * D

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token; `seq_len` is accepted for the common
        interface and changes nothing, since a recurrence costs the same at every position.

        3 x forward, the forward being 2 FLOPs per multiply-accumulate of the block matmuls and
        the LM head (the Chinchilla App. F convention, as for the Transformers) plus the WKV
        recurrence, WKV_FLOPS_PER_CHANNEL per channel per layer. Not counted, as for the
        Transformers: the embedding gather, norms, token shift, activations and gates.
        """
        D = self.d_model
        forward = 2 * self.n_layer * self._n_linear_weights() + 2 * D * self.padded_vocab
        return 3 * (forward + self.n_layer * WKV_FLOPS_PER_CHANNEL * D)


def token_shift(x: torch.Tensor) -> torch.Tensor:
    """x_{t-1} at position t, zeros at t = 0."""
    return F.pad(x, (0, 0, 1, -1))  # (B, T, D)


def mix(x: torch.Tensor, shifted: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Per-channel interpolation x * ratio + x_{t-1} * (1 - ratio)."""
    return shifted + (x - shifted) * ratio


def _channel_ramp(D: int, device: torch.device | str) -> torch.Tensor:
    """c / D for c = 0..D-1: RWKV-4 makes each init a power of it, so channels span a range."""
    return torch.arange(D, device=device, dtype=torch.float32) / D


def _orthogonal_(weight: torch.Tensor, gain: float) -> None:
    # QR in fp32 on the weight's device, whatever the weight's dtype (QR has no bf16 kernels).
    weight.copy_(nn.init.orthogonal_(torch.empty(weight.shape, device=weight.device), gain))


class TimeMixing(nn.Module):
    def __init__(self, config: RWKVConfig):
        super().__init__()
        D = config.d_model
        self.time_decay = nn.Parameter(torch.empty(D))
        self.time_first = nn.Parameter(torch.empty(D))
        self.time_mix_k = nn.Parameter(torch.empty(D))
        self.time_mix_v = nn.Parameter(torch.empty(D))
        self.time_mix_r = nn.Parameter(torch.empty(D))
        self.key = nn.Linear(D, D, bias=False)
        self.value = nn.Linear(D, D, bias=False)
        self.receptance = nn.Linear(D, D, bias=False)
        self.output = nn.Linear(D, D, bias=False)

    @torch.no_grad()
    def init_weights(self, layer: int, n_layer: int) -> None:
        """RWKV_TimeMix.__init__ and generate_init_weight of RWKV-v4neo/src/model.py."""
        D = self.time_decay.numel()
        depth = layer / max(n_layer - 1, 1)  # 0 at the first layer, 1 at the last
        shallowness = 1 - layer / n_layer  # 1 at the first layer, towards 0 at the last
        # Decay speeds from e^-5 (slow, long memory) to e^3 per step across channels; deeper
        # layers keep more channels slow.
        c = torch.arange(D, device=self.time_decay.device, dtype=torch.float32) / max(D - 1, 1)
        self.time_decay.copy_(-5 + 8 * c ** (0.7 + 1.3 * depth))
        zigzag = ((torch.arange(D, device=c.device) + 1) % 3 - 1) * 0.5
        self.time_first.copy_(math.log(0.3) + zigzag)
        ramp = _channel_ramp(D, c.device)
        self.time_mix_k.copy_(ramp**shallowness)
        self.time_mix_v.copy_(ramp**shallowness + 0.3 * depth)
        self.time_mix_r.copy_(ramp ** (0.5 * shallowness))
        for linear in (self.key, self.receptance, self.output):
            linear.weight.zero_()
        _orthogonal_(self.value.weight, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = token_shift(x)
        k = self.key(mix(x, shifted, self.time_mix_k))  # (B, T, D)
        v = self.value(mix(x, shifted, self.time_mix_v))
        r = self.receptance(mix(x, shifted, self.time_mix_r))
        # The decay goes through exp, so it is formed in fp32 even when the weights are bf16.
        w = -torch.exp(self.time_decay.float())
        y = wkv(w, self.time_first, k, v)  # (B, T, D)
        return self.output(torch.sigmoid(r) * y)


class ChannelMixing(nn.Module):
    """The "modified MLP": a squared-ReLU MLP gated by sigmoid(receptance), on token-shifted input."""

    def __init__(self, config: RWKVConfig):
        super().__init__()
        D = config.d_model
        self.time_mix_k = nn.Parameter(torch.empty(D))
        self.time_mix_r = nn.Parameter(torch.empty(D))
        self.key = nn.Linear(D, config.d_ffn, bias=False)
        self.value = nn.Linear(config.d_ffn, D, bias=False)
        self.receptance = nn.Linear(D, D, bias=False)

    @torch.no_grad()
    def init_weights(self, layer: int, n_layer: int) -> None:
        """RWKV_ChannelMix.__init__ and generate_init_weight of RWKV-v4neo/src/model.py."""
        ramp = _channel_ramp(self.time_mix_k.numel(), self.time_mix_k.device)
        shallowness = 1 - layer / n_layer
        self.time_mix_k.copy_(ramp**shallowness)
        self.time_mix_r.copy_(ramp**shallowness)
        self.value.weight.zero_()
        self.receptance.weight.zero_()
        # A widening matrix gets gain sqrt(out / in), as generate_init_weight gives it.
        _orthogonal_(self.key.weight, math.sqrt(self.key.out_features / self.key.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = token_shift(x)
        k = torch.square(torch.relu(self.key(mix(x, shifted, self.time_mix_k))))  # (B, T, 4D)
        r = self.receptance(mix(x, shifted, self.time_mix_r))
        return torch.sigmoid(r) * self.value(k)  # (B, T, D)


class Block(nn.Module):
    def __init__(self, config: RWKVConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=1e-5)
        self.time_mixing = TimeMixing(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=1e-5)
        self.channel_mixing = ChannelMixing(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.time_mixing(self.norm1(x))
        return x + self.channel_mixing(self.norm2(x))  # (B, T, D)


class RWKV(TiedLM):
    def __init__(self, config: RWKVConfig):
        blocks = (Block(config) for _ in range(config.n_layer))
        norm_embed = nn.LayerNorm(config.d_model, eps=1e-5)  # RWKV's ln0, on the embedded tokens
        super().__init__(config, blocks, nn.LayerNorm(config.d_model, eps=1e-5), norm_embed=norm_embed)

    def _init_parameters(self) -> None:
        """RWKV-4's initialisation."""
        _orthogonal_(self.embed.weight, 0.5)  # RWKV's head init; its (V, D) columns are orthonormal
        for norm in (self.norm_embed, self.norm_f):
            norm.reset_parameters()
        for layer, block in enumerate(self.blocks):
            block.norm1.reset_parameters()
            block.norm2.reset_parameters()
            block.time_mixing.init_weights(layer, self.config.n_layer)
            block.channel_mixing.init_weights(layer, self.config.n_layer)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimizer must not decay: the time_* vectors (decay, bonus, mixing
        ratios), which RWKV's trainer exempts; decaying them would pull decays and ratios to 0."""
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1].startswith("time_")}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for tokens (B, T); T may not exceed config.seq_len."""
        self._check_length(tokens.shape[1])
        x = self.norm_embed(self.embed(tokens))  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self._logits(x)  # (B, T, V)
