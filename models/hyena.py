"""Hyena, the long-convolution baseline of the Mamba scaling-law study (Gu & Dao 2023, App. E.2.1).

Hyena operator: Poli et al. 2023, https://arxiv.org/abs/2302.10866. The Mamba paper's baseline
(https://arxiv.org/abs/2312.00752) interleaves Hyena blocks with standard MLP blocks of expansion
2 instead of 4, and stacks 1.5x the Transformer's layers so that parameters match: one Hyena layer
holds about 8 D^2 weights against the Transformer's 12 D^2 (see `HyenaConfig.for_size`).

- Order-2 Hyena operator: in_proj D -> 3D, a short causal depthwise conv on all 3D projections,
  then y = x0 * (h * (x1 * v) + D_skip * (x1 * v)) with one implicit long filter h per channel,
  and out_proj. The long convolution is `kernels.fftconv`.
- Implicit filter: a small FFN with sine activations over positional features of t (t itself and
  the real and imaginary parts of complex exponentials), times an exponential decay window whose
  rate is spread across channels (safari's ExponentialModulation).
- No position embeddings: the implicit filters see positions, so the token stream needs none
  (safari's Pile LM builds its embeddings with max_position_embeddings = 0).
- GPT-3 recipe around it: pre-norm residual blocks with LayerNorm, GELU MLP with biases, no
  dropout, in the shell of `models.shell`: final LayerNorm, input embedding tied to the LM head,
  vocabulary padded to a multiple of 8 (safari's pad_vocab_size_multiple).

Taken from HazyResearch/safari at c1b5c7bcaceaf556e5b0327733a85079ec9fc431
(src/models/sequence/hyena.py, long_conv_lm.py, configs/experiment/pile/hyena.yaml):
- Filter FFN: Linear(33 -> 64), Sin, 2 x [Linear(64 -> 64), Sin], Linear(64 -> C) without bias,
  the Pile config's emb_dim 33 and Sin frequency w = 14. One trainable frequency vector is shared
  by the three activations, since safari appends the same `Sin` module three times.
- The positional features are a trained table with no weight decay (the Pile config's
  lr_pos_emb is the main LR), so the parameter count grows with seq_len.
- With order N there are N - 1 long filters per channel, and their output channels are laid out
  (channel, order) so that each order spans the whole range of decay rates.
- Initialisation: every Linear, the filter FFN's included, N(0, 0.02) with zero biases; out_proj
  and the MLP output scaled by 1 / sqrt(2 * n_layer); the short conv keeps PyTorch's default
  init; the skip D_skip ~ N(0, 1); the decay rates are fixed, not trained (modulation_lr = 0).

Deviations: no dropout (the Mamba paper trains every model without it; safari's Pile config has
embed_dropout 0.1). The short conv pads on the left only, where safari pads both sides and drops
the tail: the same outputs without the extra work.

Dimensions in shape comments: B batch, T time, D d_model, V padded vocabulary, C = (order - 1) * D
long-filter channels, E = 33 positional features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.fftconv import fftconv
from models.shell import ShellConfig, TiedLM

# The implicit filter, from safari's Pile config (configs/experiment/pile/hyena.yaml).
POS_FEATURES = 33  # t, then the real and imaginary parts of 16 complex exponentials
SIN_FREQ = 14.0  # initial frequency of the FFN's sine activations ("w")
FFN_HIDDEN_LAYERS = 2  # safari's num_inner_mlps
# ExponentialModulation defaults: the fastest channel decays to TARGET at 30% of the sequence,
# the slowest at 150%.
DECAY_TARGET, FAST_DECAY_PCT, SLOW_DECAY_PCT = 1e-2, 0.3, 1.5


@dataclass(frozen=True)
class HyenaConfig(ShellConfig):
    vocab_size: int
    """Tokenizer vocabulary; the embedding has `padded_vocab` rows."""
    n_layer: int
    """Layers, each a Hyena block and an MLP block."""
    d_model: int
    seq_len: int
    """Longest sequence the model accepts, and the length of the implicit filters' positional table."""
    order: int = 2
    """Depth of the Hyena recurrence: order + 1 projections, order - 1 long convolutions."""
    filter_order: int = 64
    """Width of the filter FFN."""
    short_filter: int = 3
    """Width of the short depthwise conv on the projections."""
    mlp_ratio: int = 2

    def __post_init__(self):
        self._require_positive(
            "vocab_size", "n_layer", "d_model", "seq_len", "filter_order", "short_filter", "mlp_ratio"
        )
        if self.order < 2:
            raise ValueError(f"order must be at least 2 (one long convolution), got {self.order}")

    @classmethod
    def for_size(cls, size: Mapping[str, Any], vocab_size: int, seq_len: int) -> HyenaConfig:
        """The config at a Transformer ladder size: 1.5x the layers, same width, heads ignored
        (Mamba App. E.2.1). 1.5 x (8 D^2) per Hyena layer = 12 D^2 per Transformer layer, so the
        two match up to the filters and the Transformer's positions. Python's round sends the odd
        depths' x.5 to the even neighbour (3 -> 4, 5 -> 8), alternately under and over 1.5x."""
        n_layer = round(1.5 * size["n_layer"])
        return cls(vocab_size=vocab_size, n_layer=n_layer, d_model=size["d_model"], seq_len=seq_len)

    @property
    def d_mlp(self) -> int:
        return self.mlp_ratio * self.d_model

    @property
    def d_filter(self) -> int:
        """Long-filter channels: one filter per model channel per convolution of the recurrence."""
        return (self.order - 1) * self.d_model

    def _n_linear_weights(self) -> int:
        """Weights of the token-wise matmuls in one layer: in_proj, out_proj, MLP."""
        D = self.d_model
        return (self.order + 1) * D * D + D * D + 2 * D * self.d_mlp

    def _n_filter_ffn_weights(self) -> int:
        Fw = self.filter_order
        return POS_FEATURES * Fw + FFN_HIDDEN_LAYERS * Fw * Fw + Fw * self.d_filter

    def n_params_nonembed(self) -> int:
        """Parameters without the token embedding and the filters' positional tables (which, like
        the Transformer's learned positions, are indexed by position): layers plus final norm."""
        D, Fw = self.d_model, self.filter_order
        biases = (self.order + 1) * D + D + self.d_mlp + D
        short_conv = (self.order + 1) * D * (self.short_filter + 1)  # taps and a bias per channel
        ffn_rest = (FFN_HIDDEN_LAYERS + 1) * Fw + Fw  # Linear biases, the shared sine frequency
        norms = 2 * 2 * D
        per_layer = self._n_linear_weights() + biases + short_conv + self._n_filter_ffn_weights()
        per_layer += ffn_rest + self.d_filter + norms  # d_filter: the skip D_skip
        return self.n_layer * per_layer + 2 * D

    def _n_position_params(self) -> int:
        return self.n_layer * self.seq_len * POS_FEATURES

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token at context `seq_len` (default: the config's).

        3 x forward, a multiply-accumulate counting 2, as the Transformer's count. Forward, per layer:
        - 2 x (in_proj, out_proj and MLP weights);
        - 2 x short_filter x (order + 1) D for the depthwise conv;
        - the filter FFN: it runs once per forward over T positions whatever the batch, and is
          counted once per sequence (as if the micro-batch held one sequence), which is
          2 x its weights per token. With micro-batch b it really costs 1/b of that; the term is
          ~1% of the total at the paper's 125M;
        - the FFT convolution, per long-filter channel and token: three real FFTs of size
          N = 2T (u, h per sequence, the inverse) at the usual 2.5 N log2 N each, which is
          15 log2(2T), plus 6 for the complex product of the spectra and 2 for the skip.
        Plus 2 x D x V for the LM head. Not counted: the embedding gather, norms, activations,
        gating and decay products, biases. PyTorch's FlopCounterMode counts the same matmuls and
        convs (but for a depthwise conv's weight gradient, see the test) and has no formula for FFTs.
        """
        T = self.seq_len if seq_len is None else seq_len
        D = self.d_model
        matmuls = 2 * (self._n_linear_weights() + self._n_filter_ffn_weights())
        short_conv = 2 * self.short_filter * (self.order + 1) * D
        long_conv = self.d_filter * (15 * math.log2(2 * T) + 8)
        forward = self.n_layer * (matmuls + short_conv + long_conv) + 2 * D * self.padded_vocab
        return round(3 * forward)


def positional_features(seq_len: int) -> torch.Tensor:
    """safari's PositionalEmbedding: [t, Re, Im of exp(-i f 2 pi k / seq_len)], (seq_len, E), with
    t = k / (seq_len - 1) in [0, 1] and f spread over [1e-4, bands - 1]."""
    bands = (POS_FEATURES - 1) // 2
    t = torch.linspace(0, 1, seq_len)[:, None]  # (seq_len, 1)
    angle = 2 * math.pi * torch.arange(seq_len)[:, None] / seq_len * torch.linspace(1e-4, bands - 1, bands)
    return torch.cat((t, angle.cos(), -angle.sin()), dim=-1)  # (seq_len, E)


class Sin(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.freq = nn.Parameter(torch.empty(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """The long filters h (C, T) of one Hyena operator, and their skip D_skip (C,)."""

    def __init__(self, config: HyenaConfig):
        super().__init__()
        C, Fw = config.d_filter, config.filter_order
        self.seq_len = config.seq_len
        self.pos_features = nn.Parameter(torch.empty(config.seq_len, POS_FEATURES))
        act = Sin(Fw)  # one module in three places: one frequency vector, as safari builds it
        layers = [nn.Linear(POS_FEATURES, Fw), act]
        for _ in range(FFN_HIDDEN_LAYERS):
            layers += [nn.Linear(Fw, Fw), act]
        self.ffn = nn.Sequential(*layers, nn.Linear(Fw, C, bias=False))
        self.D = nn.Parameter(torch.empty(C))
        decay = math.log(DECAY_TARGET)
        self.decay_range = (decay / SLOW_DECAY_PCT, decay / FAST_DECAY_PCT)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The non-Linear parameters; the model initialises the FFN's Linears with the others."""
        self.pos_features.copy_(positional_features(self.seq_len))
        self.ffn[1].freq.fill_(SIN_FREQ)
        self.D.normal_()

    def forward(self, T: int) -> torch.Tensor:
        h = self.ffn(self.pos_features[:T])  # (T, C)
        # Prefixes of one fixed time grid, so a shorter sequence sees the first T taps of the long
        # filter: the output at t never depends on the sequence's length.
        t = torch.linspace(0, 1, self.seq_len, device=h.device)[:T, None]  # (T, 1)
        rates = torch.linspace(*self.decay_range, h.shape[-1], device=h.device).abs()  # (C,)
        return (h * torch.exp(-t * rates)).T  # (C, T)


class HyenaOperator(nn.Module):
    def __init__(self, config: HyenaConfig):
        super().__init__()
        width = (config.order + 1) * config.d_model
        self.order, self.short_filter = config.order, config.short_filter
        self.in_proj = nn.Linear(config.d_model, width)
        self.short_conv = nn.Conv1d(width, width, config.short_filter, groups=width)
        self.filter = ImplicitFilter(config)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, D = x.shape[1:]
        u = self.in_proj(x).transpose(1, 2)  # (B, (order + 1) D, T)
        u = self.short_conv(F.pad(u, (self.short_filter - 1, 0)))  # causal: pad the past only
        *gates, v = u.split(D, dim=1)  # order gates x0 .. x_{order-1} and v, (B, D, T) each
        h = self.filter(T).view(D, self.order - 1, T)  # (D, order - 1, T)
        skip = self.filter.D.view(D, self.order - 1)
        for i, x_i in enumerate(reversed(gates[1:])):
            v = fftconv(v * x_i, h[:, i], skip[:, i])  # (B, D, T)
        y = v * gates[0]  # (B, D, T)
        return self.out_proj(y.transpose(1, 2))  # (B, T, D)


class MLP(nn.Module):
    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_mlp)
        self.proj = nn.Linear(config.d_mlp, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=1e-5)
        self.hyena = HyenaOperator(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.hyena(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # (B, T, D)


class Hyena(TiedLM):
    def __init__(self, config: HyenaConfig):
        blocks = (Block(config) for _ in range(config.n_layer))
        super().__init__(config, blocks, nn.LayerNorm(config.d_model, eps=1e-5))

    def _init_parameters(self) -> None:
        """safari's GPT-2 initialisation (long_conv_lm.py `_init_weights`)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, 0.02)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, (nn.Conv1d, ImplicitFilter)):
                module.reset_parameters()
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            # Each layer adds two residual outputs; scaling keeps the stream's variance flat in depth.
            block.hyena.out_proj.weight.normal_(0.0, residual_std)
            block.mlp.proj.weight.normal_(0.0, residual_std)

    def no_weight_decay(self) -> set[str]:
        """The implicit filters' parameters (FFN weights, biases and sine frequencies, positional
        tables, skips): safari trains them with weight decay 0 (HyenaFilter wd = 0, OptimModule)."""
        return {
            f"{prefix}.{name}"
            for prefix, module in self.named_modules()
            if isinstance(module, ImplicitFilter)
            for name, _ in module.named_parameters()
        }

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for tokens (B, T); T may not exceed config.seq_len."""
        self._check_length(tokens.shape[1])
        x = self.embed(tokens)  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self._logits(x)  # (B, T, V)
