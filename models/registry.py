"""Architectures and size ladders: the names a sweep may use, and how each becomes a model.

An architecture is an `ArchSpec`: how a ladder size becomes the architecture's config, and the
module class built from that config. Configs count their own parameters and FLOPs, so planning
sizes a grid without building a model. Adding an architecture is one entry in ARCHITECTURES.

    config = model_config("transformer++", LADDERS["tiny"][0], vocab_size=512, seq_len=128)
    model = build_model(config)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch.nn as nn

from models.hyena import Hyena, HyenaConfig
from models.mamba import Mamba, MambaConfig
from models.rwkv import RWKV, RWKVConfig
from models.transformer import Transformer, TransformerConfig


class ModelConfig(Protocol):
    """What the pipeline asks of every architecture's config."""

    def n_params(self) -> int: ...

    def n_params_nonembed(self) -> int: ...

    def flops_per_token(self, seq_len: int | None = None) -> int: ...

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class ArchSpec:
    make_config: Callable[[Mapping[str, Any], int, int], ModelConfig]
    """(size, vocab_size, seq_len) -> config. The size is a ladder entry; an architecture may
    reinterpret it (Mamba, for instance, stacks two blocks per Transformer layer)."""
    config_type: type
    model: Callable[[Any], nn.Module]
    """Builds the module from a config of `config_type`."""


def _transformer(variant: str) -> ArchSpec:
    def make_config(size: Mapping[str, Any], vocab_size: int, seq_len: int) -> TransformerConfig:
        return TransformerConfig(
            vocab_size=vocab_size,
            n_layer=size["n_layer"],
            d_model=size["d_model"],
            n_head=size["n_head"],
            seq_len=seq_len,
            variant=variant,
        )

    return ArchSpec(make_config, TransformerConfig, Transformer)


ARCHITECTURES: dict[str, ArchSpec] = {
    "transformer": _transformer("gpt3"),
    "transformer++": _transformer("pp"),
    "mamba": ArchSpec(MambaConfig.for_size, MambaConfig, Mamba),
    "hyena": ArchSpec(HyenaConfig.for_size, HyenaConfig, Hyena),
    "rwkv": ArchSpec(RWKVConfig.for_size, RWKVConfig, RWKV),
}

# Each size: name, n_layer, d_model, n_head, and its reference peak LR (the GPT-3 recipe; the
# Mamba paper's improved recipe trains at 5x this).
LADDERS: dict[str, list[dict[str, Any]]] = {
    # Mamba paper Table 12 (App. E.2.1), the GPT-3 Small/Medium/Large/XL shapes except that XL
    # has 32 heads of 64 there (GPT-3 Table 2.1: 24 of 128).
    "paper": [
        {"name": "125m", "n_layer": 12, "d_model": 768, "n_head": 12, "lr": 6e-4},
        {"name": "350m", "n_layer": 24, "d_model": 1024, "n_head": 16, "lr": 3e-4},
        {"name": "760m", "n_layer": 24, "d_model": 1536, "n_head": 16, "lr": 2.5e-4},
        {"name": "1.3b", "n_layer": 24, "d_model": 2048, "n_head": 32, "lr": 2e-4},
    ],
    # CPU-sized: about 2.3-3.3x apart in non-embedding parameters (25K to 1.6M for the GPT-3
    # variant), depth growing with width as in the paper ladder; head dim 16, then 32.
    # LRs fall with size like the paper's, from a higher start because the models are tiny.
    "tiny": [
        {"name": "t1", "n_layer": 2, "d_model": 32, "n_head": 2, "lr": 3e-3},
        {"name": "t2", "n_layer": 3, "d_model": 48, "n_head": 3, "lr": 2.5e-3},
        {"name": "t3", "n_layer": 4, "d_model": 64, "n_head": 4, "lr": 2e-3},
        {"name": "t4", "n_layer": 5, "d_model": 96, "n_head": 3, "lr": 1.75e-3},
        {"name": "t5", "n_layer": 8, "d_model": 128, "n_head": 4, "lr": 1.5e-3},
    ],
}


def _valid() -> str:
    return ", ".join(ARCHITECTURES)


def model_config(arch: str, size: Mapping[str, Any], vocab_size: int, seq_len: int) -> ModelConfig:
    """The config of architecture `arch` at a ladder size (a mapping with n_layer, d_model, n_head)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {_valid()}")
    missing = [k for k in ("n_layer", "d_model", "n_head") if k not in size]
    if missing:
        raise ValueError(f"size {dict(size)} lacks {', '.join(missing)}")
    return ARCHITECTURES[arch].make_config(size, vocab_size, seq_len)


def build_model(config: ModelConfig) -> nn.Module:
    """The module for a config made by `model_config`, freshly initialised."""
    for spec in ARCHITECTURES.values():
        if isinstance(config, spec.config_type):
            return spec.model(config)
    raise ValueError(f"no architecture builds a {type(config).__name__}; valid: {_valid()}")


def config_from_dict(arch: str, d: Mapping[str, Any]) -> ModelConfig:
    """Rebuild a config from its `to_dict()` (as stored in a RunSpec)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {_valid()}")
    return ARCHITECTURES[arch].config_type(**d)
