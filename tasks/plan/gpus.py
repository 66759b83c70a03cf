"""The plan on GPUs: GPU-hours on the named GPUs at a stated MFU, and each run's memory per GPU.

GPU-hours are the plan's own training FLOPs (each run's flops_per_token x tokens, the count its MFU is
measured against) over the GPU's dense bf16 peak times `resources.mfu`. Memory per GPU, for the runs this
project trains (fp32 master weights and AdamW state, bf16 autocast, ZeRO over a run's ranks):

    weights 4 B/param, gradients 4 B/param, AdamW m and v 8 B/param, of which ZeRO 1 shards the
    optimizer state over the ranks, ZeRO 2 the gradients too and ZeRO 3 the weights too;
    activations 34 B x seq_len x micro_batch x d_model per layer (Korthikanti et al. 2022, Table 2, for
    16-bit activations with flash attention, which leaves out the 5 a s / h score term), plus the
    logits, 10 B x seq_len x micro_batch x vocab (bf16 logits, their fp32 copy and its gradient).

It is an estimate for a warning, not an allocator: CUDA's context and fragmentation take more, hence
FIT, the share of a GPU's memory a run may plan to fill.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.plan.spec import Plan, RunSpec

FIT = 0.9


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_flops: float
    """Dense bf16 peak, FLOP/s (not the 2:4-sparse figure)."""
    memory_bytes: float


GPUS = (
    Gpu("H100", 989e12, 80e9),  # SXM, 80 GB HBM3
    Gpu("H200", 989e12, 141e9),  # the same compute as H100, 141 GB HBM3e
    Gpu("A100", 312e12, 80e9),  # SXM, 80 GB
)


def gpu_hours(plan: Plan, gpu: Gpu, mfu: float) -> float:
    return plan.total_flops / (gpu.bf16_flops * mfu) / 3600


def memory_per_gpu(r: RunSpec) -> float:
    """Bytes one rank of the run holds at its peak (the estimate above)."""
    p, ranks = r.n_params, r.ranks
    weights, grads, adam = 4.0 * p, 4.0 * p, 8.0 * p
    if r.zero_stage >= 1:
        adam /= ranks
    if r.zero_stage >= 2:
        grads /= ranks
    if r.zero_stage >= 3:
        weights /= ranks
    tokens = r.seq_len * r.micro_batch_size
    activations = 34.0 * tokens * r.d_model * r.n_layer + 10.0 * tokens * r.model["vocab_size"]
    return weights + grads + adam + activations


def gpu_lines(plan: Plan, mfu: float) -> list[str]:
    """The plan's GPU-hours per named GPU, and a warning for each run too big for one of them."""
    hours = ", ".join(f"{g.name} {gpu_hours(plan, g, mfu):,.3g}" for g in GPUS)
    lines = [f"GPU-hours at {mfu:.0%} MFU (resources.mfu) of dense bf16 peak: {hours}"]
    for r in plan.runs:
        need = memory_per_gpu(r)
        if short := [g.name for g in GPUS if need > FIT * g.memory_bytes]:
            lines.append(
                f"warning: {r.run_id} needs about {need / 1e9:.0f} GB per GPU (ZeRO {r.zero_stage} over "
                f"{r.ranks} rank(s), micro-batch {r.micro_batch_size}): more than {FIT:.0%} of one "
                f"{' or '.join(short)}; raise train.zero_stage or resources.ranks_per_run, or lower "
                "train.micro_batch_size"
            )
    return lines
