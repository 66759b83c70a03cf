"""The planned records: `RunSpec`, one fully resolved run (a point of the grid), and `Plan`, the sweep's grid.

A RunSpec's `run_id` hashes everything that changes what the run computes (model, optimizer, schedule,
steps, batch, seed, precision, ranks, ZeRO stage, the data's content) and CODE_VERSION, never a path:
the same run in two sweeps is the same run, a re-run finds it, and other data is another run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

# Bump when a change alters the numbers a run produces (model, loss, schedule, data order).
CODE_VERSION = "1"


@dataclass(frozen=True)
class RunSpec:
    sweep: str
    run_id: str
    name: str
    arch: str
    size: str
    model: dict
    """The architecture's config (registry.model_config(...).to_dict())."""
    n_layer: int
    d_model: int
    n_params: int
    n_params_nonembed: int
    flops_per_token: float
    tokens: int
    """Planned training tokens: steps x batch_tokens."""
    steps: int
    flops: float
    """Planned training FLOPs: flops_per_token x tokens."""
    lr: float
    seed: int
    seq_len: int
    batch_tokens: int
    micro_batch_size: int
    grad_accum: int
    ranks: int
    warmup_steps: int
    schedule: dict
    optimizer: dict
    precision: str
    zero_stage: int
    eval_interval: int
    checkpoint_interval: int
    log_interval: int
    val_tokens: int
    data: dict
    """The data's identity by content, never a path (tasks.data.identity), and seq_len."""
    est_wall_s: float
    nodes: int = 1
    """Nodes the run's `ranks` are spread over, ranks // nodes on each."""

    @property
    def ranks_per_node(self) -> int:
        return self.ranks // self.nodes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    sweep: str
    runs: list[RunSpec]
    flops_per_s: float
    measured_steps: bool = False
    """Whether the runs' estimates come from their models' measured steps (tasks.plan.calibrate), not
    from flops_per_s."""

    @property
    def total_flops(self) -> float:
        return sum(r.flops for r in self.runs)

    @property
    def total_est_wall_s(self) -> float:
        return sum(r.est_wall_s for r in self.runs)


def run_id_of(content: dict) -> str:
    blob = json.dumps({**content, "code_version": CODE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
