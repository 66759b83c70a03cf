"""What every architecture of the study shares around its blocks: the config's common rules and
the language-model shell (token embedding, final norm, LM head tied to the embedding).

A model file uses both: its config (a frozen dataclass with at least vocab_size, n_layer, d_model
and seq_len) mixes in `ShellConfig`, its model subclasses `TiedLM` and passes in its blocks and
final norm. The shell fixes the parameter names (`embed`, `blocks`, `norm_f`, `lm_head`) that
checkpoints, tests and the trainer's weight-decay groups rely on.

Dimensions in shape comments: B batch, T time, D d_model, V padded vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict

import torch
import torch.nn as nn

VOCAB_MULTIPLE = 8
"""The embedding's rows are padded to a multiple of this: it keeps the LM-head matmul on
tensor-core shapes (mamba_ssm's config_mamba.py pad_vocab_size_multiple, safari's likewise)."""


class ShellConfig(ABC):
    """Mixin for an architecture's frozen config dataclass; it adds no fields."""

    vocab_size: int
    n_layer: int
    d_model: int
    seq_len: int

    def _require_positive(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    @abstractmethod
    def n_params_nonembed(self) -> int:
        """Parameters without the token embedding (and position tables): what each architecture counts."""

    def _n_position_params(self) -> int:
        """Parameters indexed by position (learned position tables), which `n_params_nonembed`
        leaves out with the token embedding; none unless the architecture has them."""
        return 0

    def n_params(self) -> int:
        """All parameters, the tied embedding / LM head counted once."""
        return self.n_params_nonembed() + self.padded_vocab * self.d_model + self._n_position_params()

    def to_dict(self) -> dict:
        return asdict(self)


class TiedLM(nn.Module, ABC):
    """Token embedding (V, D), the architecture's blocks, a final norm and an LM head that shares
    the embedding's matrix: tokens (B, T) -> logits (B, T, V).

    `stem` holds modules that act on the embedded tokens before the blocks (learned positions,
    an input norm); they are registered between the embedding and the blocks, so parameters
    are listed, and initialised, in the order the model applies them. Subclasses define
    `forward` and `_init_parameters`.
    """

    def __init__(
        self,
        config: ShellConfig,
        blocks: Iterable[nn.Module],
        norm_f: nn.Module,
        **stem: nn.Module | None,
    ):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.padded_vocab, config.d_model)
        for name, module in stem.items():
            setattr(self, name, module)
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = norm_f
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Ties the head to the embedding and sets every parameter (`_init_parameters`), so it
        also fills a model built on the meta device and moved with `to_empty`."""
        self.lm_head.weight = self.embed.weight  # (re)tie: to_empty allocates the two separately
        self._init_parameters()

    @abstractmethod
    def _init_parameters(self) -> None:
        """The architecture's own initialisation of every parameter, the tied embedding included."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimizer must not decay beyond the trainer's own rule (which
        already exempts biases, norms and embeddings); none unless the architecture says so."""
        return set()

    def _check_length(self, T: int) -> None:
        """Refuses a sequence longer than config.seq_len, for the models that accept no more."""
        if T > self.config.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than config.seq_len = {self.config.seq_len}")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm_f(x))  # (B, T, D) -> (B, T, V)
