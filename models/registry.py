"""Architectures: how each name a sweep may use becomes a model.

An architecture is an `ArchSpec`: how a ladder size becomes the architecture's config, and the
module class built from that config. Configs count their own parameters and FLOPs, so planning
sizes a grid without building a model. The names and the size ladders live in the torch-free
`models.ladders`; adding an architecture is one name there and one entry in ARCHITECTURES here.

    config = model_config("transformer++", models.ladders.LADDERS["tiny"][0], vocab_size=512, seq_len=128)
    model = build_model(config)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch.nn as nn

from models.hyena import Hyena, HyenaConfig
from models.ladders import ARCH_NAMES
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
    """The architecture of the same name as the Transformer variant."""

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
    "transformer": _transformer("transformer"),
    "transformer++": _transformer("transformer++"),
    "mamba": ArchSpec(MambaConfig.for_size, MambaConfig, Mamba),
    "hyena": ArchSpec(HyenaConfig.for_size, HyenaConfig, Hyena),
    "rwkv": ArchSpec(RWKVConfig.for_size, RWKVConfig, RWKV),
}
# The torch-free list that config validation reads must name exactly these, in this order.
if tuple(ARCHITECTURES) != ARCH_NAMES:
    raise RuntimeError(f"models.ladders.ARCH_NAMES {ARCH_NAMES} and the registry's {tuple(ARCHITECTURES)} differ")


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
