"""The architecture names a sweep may use and the size ladders it draws from, without torch.

Config validation and planning read these; importing them must not cost a PyTorch import. The
registry (`models.registry`) maps each name to its model and checks that the two lists agree.
"""

from __future__ import annotations

from typing import Any

ARCH_NAMES: tuple[str, ...] = ("transformer", "transformer++", "mamba", "hyena", "rwkv")

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
    # Transformer), depth growing with width as in the paper ladder; head dim 16, then 32.
    # LRs fall with size like the paper's, from a higher start because the models are tiny.
    "tiny": [
        {"name": "t1", "n_layer": 2, "d_model": 32, "n_head": 2, "lr": 3e-3},
        {"name": "t2", "n_layer": 3, "d_model": 48, "n_head": 3, "lr": 2.5e-3},
        {"name": "t3", "n_layer": 4, "d_model": 64, "n_head": 4, "lr": 2e-3},
        {"name": "t4", "n_layer": 5, "d_model": 96, "n_head": 3, "lr": 1.75e-3},
        {"name": "t5", "n_layer": 8, "d_model": 128, "n_head": 4, "lr": 1.5e-3},
    ],
}
