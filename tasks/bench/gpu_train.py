"""Training throughput and MFU on CUDA, for `scaling bench gpu`: each model's training step as the trainer
takes it (tasks/train/step.py: the forward under bf16 autocast, fp32 cross-entropy, backward, then the
optimizer), here with torch's fused AdamW and no DeepSpeed engine around it, on random tokens.

MFU = tokens/s x the model's own FLOPs per token (each config's `flops_per_token`: Chinchilla App. F's
matmul count for the Transformers, the same accounting for the others; forward + backward = 3x forward)
over the bf16 matmul peak measured in the same run. Imports only torch, models/ and kernels/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import implementations
from models.ladders import LADDERS
from models.registry import build_model, model_config
from tasks.bench.gpu_scan import sync
from tasks.bench.table import print_table, ratio

VOCAB = 50257
"""The GPT-2 tokenizer's, which the Pile sweep trains with."""


@dataclass(frozen=True)
class Point:
    arch: str
    size: str
    seq_len: int


@dataclass(frozen=True)
class Result:
    point: Point
    params: int
    micro_batch: int
    tokens_per_s: float
    mfu: float
    peak_gib: float


def matmul_peak(device: str, size: int, reps: int = 10) -> float:
    """bf16 matmul FLOP/s of (size x size) products: the mean of `reps` after three warm-ups."""
    a, b = torch.randn(2, size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start)


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        logits = model(x)
    F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(point: Point, ladder: str, device: str, tokens: int, warmup: int, reps: int, peak: float) -> Result:
    """The point's tokens/s at the largest micro-batch of at most `tokens` tokens that fits in memory."""
    size = next(s for s in LADDERS[ladder] if s["name"] == point.size)
    config = model_config(point.arch, size, VOCAB, point.seq_len)
    model = build_model(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    micro_batch = max(1, tokens // point.seq_len)
    while True:
        x = torch.randint(0, VOCAB, (micro_batch, point.seq_len + 1), device=device)
        x, y = x[:, :-1], x[:, 1:]
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = _seconds_per_step(model, opt, x, y, device, warmup, reps)
            break
        except torch.OutOfMemoryError:
            if micro_batch == 1:
                raise
            micro_batch //= 2  # the largest that fits
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    rate = micro_batch * point.seq_len / seconds
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    n_params = config.n_params()
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return Result(point, n_params, micro_batch, rate, rate * config.flops_per_token(point.seq_len) / peak, peak_gib)


def _seconds_per_step(model, opt, x, y, device: str, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        step(model, opt, x, y)
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        step(model, opt, x, y)
    sync(device)
    return (time.perf_counter() - start) / reps


def report(results: list[Result], peak: float, device: str) -> None:
    baseline: dict[int, Result] = {}
    for r in results:
        if r.point.arch == "transformer++":
            baseline.setdefault(r.point.seq_len, r)
    rows = []
    for r in results:
        base = baseline.get(r.point.seq_len)
        rows.append(
            [
                f"{r.point.arch} {r.point.size}",
                f"{r.params / 1e6:.1f}M",
                r.point.seq_len,
                r.micro_batch,
                f"{r.tokens_per_s:,.0f}",
                f"{r.mfu:.1%}",
                f"{r.peak_gib:.1f}",
                ratio(r.tokens_per_s, base.tokens_per_s) if base else "-",
            ]
        )
    kernels = ", ".join(f"{op} {impl}" for op, impl in implementations(device).items())
    print_table(
        f"training step tokens/s; MFU against the bf16 matmul peak {peak / 1e12:.3g} TFLOP/s; kernels: {kernels}; "
        "vs transformer++ at the same sequence length (its smallest size there)",
        ["model", "params", "seq", "micro-batch", "tokens/s", "MFU", "peak GiB", "vs transformer++"],
        rows,
    )
