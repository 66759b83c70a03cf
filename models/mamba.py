"""Mamba, the selective state-space language model of the scaling-law study (Gu & Dao 2023).

https://arxiv.org/abs/2312.00752, §3 and App. E.2. Faithful to the authors' code
(state-spaces/mamba at e9594ce: mamba_ssm/modules/mamba_simple.py, models/mixer_seq_simple.py):

- Mixer: in_proj (no bias) to x and z, each E = expand * D wide; a causal depthwise conv1d of
  width d_conv with bias on x, then SiLU; x_proj (no bias) to dt (rank R = ceil(D / 16)), B and
  C (N = d_state each); dt_proj (with bias) lifts dt back to E channels; the selective scan with
  A = -exp(A_log), skip D, softplus(dt + dt bias) and gate SiLU(z); out_proj (no bias).
- Pre-norm residual blocks of one mixer each (no MLP), RMSNorm with eps 1e-5, no dropout, in the
  shell of `models.shell`: a final RMSNorm, the LM head tied to the embedding, vocabulary padded
  to a multiple of 8.
- Initialisation (mixer_seq_simple's _init_weights): embedding N(0, 0.02); Linear and conv
  weights PyTorch's default (Kaiming uniform); dt_proj weight U(+-R^-1/2); dt_proj bias the
  inverse softplus of dt, dt log-uniform in [1e-3, 1e-1] floored at 1e-4; A_log = log(1..N) in
  every channel (S4D-real, A_n = -(n + 1)); D = 1; out_proj redrawn and divided by
  sqrt(n_layer) (the authors' init runs twice and the second pass, n_residuals_per_layer = 1, wins).
- A_log and D take no weight decay (`no_weight_decay()`); the dt bias, being 1-D, takes none
  either under the trainer's rule.

Deviations from the authors' code: no fused add + norm kernel and no residual_in_fp32 switch (the
residual stream is in the parameters' dtype, fp32 under autocast); no inference cache for
token-by-token decoding. The scan goes through `kernels.selective_scan.selective_scan` (Triton
on GPUs, a chunked PyTorch scan elsewhere), which computes in fp32 whatever the input dtype.

Dimensions in shape comments: B batch, T time, D d_model, E d_inner = expand * D, N d_state,
R dt_rank, V padded vocabulary. The SSM's own B and C matrices are called ssm_B and ssm_C.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.selective_scan import selective_scan
from models.shell import ShellConfig, TiedLM

# mamba_simple.py defaults for the dt initialisation.
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4


@dataclass(frozen=True)
class MambaConfig(ShellConfig):
    vocab_size: int
    """Tokenizer vocabulary; the embedding has `padded_vocab` rows."""
    n_layer: int
    """Mamba blocks (the registry stacks two per Transformer layer of a ladder size)."""
    d_model: int
    seq_len: int
    """Training context. The model has no position table and accepts any length."""
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2

    def __post_init__(self):
        self._require_positive("vocab_size", "n_layer", "d_model", "seq_len", "d_state", "d_conv", "expand")

    @classmethod
    def for_size(cls, size: Mapping[str, Any], vocab_size: int, seq_len: int) -> MambaConfig:
        """The Mamba of a ladder size: two blocks per Transformer layer at the same width, which
        matches the parameters (a block has ~6 D^2, a Transformer layer 12 D^2; paper §4.2.1,
        App. E.2.1). The size's n_head has no meaning here."""
        return cls(vocab_size=vocab_size, n_layer=2 * size["n_layer"], d_model=size["d_model"], seq_len=seq_len)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.d_model / 16)

    def _n_linear_weights(self) -> int:
        """Weights of the matmuls in one block: in_proj, x_proj, dt_proj, out_proj."""
        D, E, N, R = self.d_model, self.d_inner, self.d_state, self.dt_rank
        return D * 2 * E + E * (R + 2 * N) + R * E + E * D

    def n_params_nonembed(self) -> int:
        """Parameters without the token embedding: blocks plus the final norm. With the defaults,
        6 D^2 + 4 D R + 111 D a block (mamba-setup §4.1)."""
        E, N, K = self.d_inner, self.d_state, self.d_conv
        conv = E * K + E
        ssm = E + E * N + E  # dt_proj bias, A_log, D
        block = self._n_linear_weights() + conv + ssm + self.d_model  # + the block's RMSNorm
        return self.n_layer * block + self.d_model

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token. `seq_len` is accepted for the common
        interface and does not matter: a Mamba block's cost does not grow with the context.

        3 x the forward count (backward = 2 x forward, as for the Transformer), where the forward
        counts, per token (mamba-setup §4.6):
        - matmuls at 2 FLOPs a multiply-add: the block's four projections and the LM head (2 D V);
        - the depthwise conv: 2 * d_conv * E;
        - the selective scan: 9 * E * N (A. Gu, state-spaces/mamba#110: discretising A and B,
          the state update and the readout);
        and leaves out norms, SiLU, softplus, the D skip, the z gate, biases and the embedding
        gather. The scan is 2% of the total at the paper's 125M size, 26% at the tiny ladder's t1
        with a vocabulary of 512.
        """
        E, N, K = self.d_inner, self.d_state, self.d_conv
        block = 2 * self._n_linear_weights() + 2 * K * E + 9 * E * N
        return 3 * (self.n_layer * block + 2 * self.d_model * self.padded_vocab)


class MambaMixer(nn.Module):
    """The selective SSM block of mamba_simple.py: (B, T, D) -> (B, T, D)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        D, E, N, R, K = config.d_model, config.d_inner, config.d_state, config.dt_rank, config.d_conv
        self.d_state, self.dt_rank = N, R
        self.in_proj = nn.Linear(D, 2 * E, bias=False)
        # Padding K - 1 on both sides and keeping the first T outputs makes the conv causal.
        self.conv1d = nn.Conv1d(E, E, K, groups=E, padding=K - 1)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, D, bias=False)

    @torch.no_grad()
    def init_weights(self, n_layer: int) -> None:
        for module in (self.in_proj, self.conv1d, self.x_proj, self.out_proj):
            module.reset_parameters()  # PyTorch's default, which the authors keep
        self.out_proj.weight /= math.sqrt(n_layer)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        E = self.D.shape[0]
        log_dt = torch.rand(E, device=self.D.device) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
        dt = log_dt.exp().clamp(min=DT_FLOOR)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(E, -1))
        self.D.fill_(1.0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        T = hidden.shape[1]
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, T, E) each
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :T])  # (B, E, T)
        dt, ssm_B, ssm_C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, T, E); the bias enters the scan, before the softplus
        y = selective_scan(
            x,
            dt.transpose(1, 2),
            -torch.exp(self.A_log.float()),  # (E, N)
            ssm_B.transpose(1, 2),  # (B, N, T)
            ssm_C.transpose(1, 2),  # (B, N, T)
            D=self.D.float(),
            z=z.transpose(1, 2),  # (B, E, T)
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )  # (B, E, T)
        return self.out_proj(y.transpose(1, 2))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.norm = nn.RMSNorm(config.d_model, eps=1e-5)
        self.mixer = MambaMixer(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))  # (B, T, D)


class Mamba(TiedLM):
    def __init__(self, config: MambaConfig):
        blocks = (Block(config) for _ in range(config.n_layer))
        super().__init__(config, blocks, nn.RMSNorm(config.d_model, eps=1e-5))

    def _init_parameters(self) -> None:
        """The authors' initialisation."""
        self.embed.weight.normal_(0.0, 0.02)
        for block in self.blocks:
            block.norm.reset_parameters()
            block.mixer.init_weights(self.config.n_layer)
        self.norm_f.reset_parameters()

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimizer must not decay: every block's A_log and D."""
        return {name for name, _ in self.named_parameters() if name.endswith(("mixer.A_log", "mixer.D"))}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for tokens (B, T)."""
        x = self.embed(tokens)  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self._logits(x)  # (B, T, V)
