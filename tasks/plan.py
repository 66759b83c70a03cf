"""Plan: expand a SweepConfig into RunSpecs, count parameters and FLOPs, estimate time.

Nothing here trains or reads the corpus. A RunSpec is one fully resolved grid point; its
`run_id` hashes its content and CODE_VERSION (never paths), so the same point in two sweeps
is the same run and a re-run finds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from models.registry import model_config
from tasks.config import ConfigError, SweepConfig
from tasks.data import check_data, vocab_size_for

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
    """The data identity (source, tokenizer, lengths), never a path."""
    est_wall_s: float

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

    @property
    def total_flops(self) -> float:
        return sum(r.flops for r in self.runs)

    @property
    def total_est_wall_s(self) -> float:
        return sum(r.est_wall_s for r in self.runs)


def _data_identity(cfg: SweepConfig) -> dict:
    d = cfg.data
    ident = {"source": d.source, "tokenizer": d.tokenizer, "seq_len": d.seq_len, "val_tokens": d.val_tokens}
    if d.source == "sample":
        ident["sample_bytes"] = d.sample_bytes
    tok = Path(d.tokenizer)
    if tok.suffix == ".json" and tok.is_file():
        ident["tokenizer"] = "sha256:" + hashlib.sha256(tok.read_bytes()).hexdigest()[:16]
    return ident


def _run_id(content: dict) -> str:
    blob = json.dumps({**content, "code_version": CODE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _fmt_count(x: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def _fmt_lr(lr: float) -> str:
    """1.5e-3, 3e-4: how papers write learning rates (the run names read mamba-350m-7B-lr1.5e-3)."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def measure_flops_per_s(threads: int) -> float:
    """Achieved bf16 matmul FLOP/s of one rank, from a ~0.3 s probe.

    Small models reach only a fraction of it (narrow matmuls, optimizer, softmax, eval): the
    sample sweep's tiny models achieved 13-20 GFLOP/s per thread where this probe measured about
    280 on the same 2-core CPU, hence the factor 0.06.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a = torch.randn(256, 256, dtype=torch.bfloat16)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        a @ a
        n += 1
    dt = time.perf_counter() - t0
    torch.set_num_threads(old)
    return 0.06 * n * 2 * 256**3 / dt


def threads_per_rank(cfg: SweepConfig) -> int:
    r = cfg.resources
    if r.threads_per_rank:
        return r.threads_per_rank
    return max(1, (os.cpu_count() or 1) // (r.concurrency * r.ranks_per_run))


def plan_sweep(cfg: SweepConfig, flops_per_s: float | None = None) -> Plan:
    """Every grid point of the sweep as a RunSpec, or ConfigError naming what cannot run."""
    check_data(cfg.data)
    vocab = vocab_size_for(cfg.data)
    fps = flops_per_s or cfg.resources.flops_per_s or measure_flops_per_s(threads_per_rank(cfg))
    sizes = [s for s in cfg.size_ladder() if cfg.sizes is None or s.name in cfg.sizes]
    seqs_per_rank = cfg.train.batch_tokens // cfg.data.seq_len // cfg.resources.ranks_per_run
    micro = cfg.train.micro_batch_size or seqs_per_rank
    data = _data_identity(cfg)
    runs = []
    for arch in cfg.architectures:
        for size in sizes:
            mcfg = model_config(arch, size.model_dump(), vocab_size=vocab, seq_len=cfg.data.seq_len)
            n_params = mcfg.n_params()
            budgets = cfg.tokens.counts or [cfg.tokens.per_param * m * n_params for m in cfg.tokens.multipliers]
            lrs = cfg.lr.values or [s * size.lr for s in cfg.lr.scale]
            for budget in budgets:
                if budget < cfg.train.batch_tokens:
                    raise ConfigError(
                        f"tokens: the budget for {arch} size {size.name} is {budget:.0f} tokens, smaller than "
                        f"one step (train.batch_tokens = {cfg.train.batch_tokens}); raise tokens.per_param "
                        f"or tokens.multipliers, or lower train.batch_tokens"
                    )
                steps = math.ceil(budget / cfg.train.batch_tokens)
                tokens = steps * cfg.train.batch_tokens
                for lr in lrs:
                    for seed in cfg.seeds:
                        runs.append(
                            _spec(cfg, arch, size.name, mcfg, steps, tokens, lr, seed, micro, seqs_per_rank, data, fps)
                        )
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError("the grid has duplicate points (repeated sizes, token budgets or learning rates)")
    return Plan(sweep=cfg.name, runs=runs, flops_per_s=fps)


def _spec(cfg, arch, size, mcfg, steps, tokens, lr, seed, micro, seqs_per_rank, data, fps) -> RunSpec:
    fpt = mcfg.flops_per_token(cfg.data.seq_len)
    schedule = cfg.schedule.model_dump()
    optimizer = {**cfg.optimizer.model_dump(), "betas": list(cfg.optimizer.betas)}
    content = {
        "arch": arch,
        "model": mcfg.to_dict(),
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "batch_tokens": cfg.train.batch_tokens,
        "schedule": schedule,
        "optimizer": optimizer,
        "precision": cfg.train.precision,
        "data": data,
    }
    flops = fpt * tokens
    est = cfg.resources.startup_s + flops / (fps * cfg.resources.ranks_per_run)
    return RunSpec(
        sweep=cfg.name,
        run_id=_run_id(content),
        name=f"{arch}-{size}-{_fmt_count(tokens)}-lr{_fmt_lr(lr)}" + (f"-s{seed}" if len(cfg.seeds) > 1 else ""),
        arch=arch,
        size=size,
        model=mcfg.to_dict(),
        n_layer=mcfg.n_layer,
        d_model=mcfg.d_model,
        n_params=mcfg.n_params(),
        n_params_nonembed=mcfg.n_params_nonembed(),
        flops_per_token=fpt,
        tokens=tokens,
        steps=steps,
        flops=flops,
        lr=lr,
        seed=seed,
        seq_len=cfg.data.seq_len,
        batch_tokens=cfg.train.batch_tokens,
        micro_batch_size=micro,
        grad_accum=seqs_per_rank // micro,
        ranks=cfg.resources.ranks_per_run,
        warmup_steps=int(cfg.schedule.warmup_fraction * steps),
        schedule=schedule,
        optimizer=optimizer,
        precision=cfg.train.precision,
        zero_stage=cfg.train.zero_stage,
        eval_interval=cfg.train.eval_interval,
        checkpoint_interval=cfg.train.checkpoint_interval,
        log_interval=cfg.train.log_interval,
        val_tokens=cfg.data.val_tokens,
        data=data,
        est_wall_s=est,
    )


def _fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def format_plan(plan: Plan, concurrency: int = 1) -> str:
    """The grid as a fixed-width table, with the sweep's totals."""
    head = [
        "run_id",
        "arch",
        "size",
        "n_layer",
        "d_model",
        "n_params",
        "nonembed",
        "tokens",
        "lr",
        "steps",
        "flops",
        "est",
    ]
    rows = [
        [
            r.run_id,
            r.arch,
            r.size,
            str(r.n_layer),
            str(r.d_model),
            _fmt_count(r.n_params),
            _fmt_count(r.n_params_nonembed),
            _fmt_count(r.tokens),
            f"{r.lr:.3g}",
            str(r.steps),
            f"{r.flops:.3g}",
            _fmt_s(r.est_wall_s),
        ]
        for r in plan.runs
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:  # text columns flush left, numbers flush right
        return "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(head), line(["-" * w for w in widths]), *map(line, rows)]
    out.append("")
    out.append(
        f"{len(plan.runs)} runs, {plan.total_flops:.3g} training FLOPs, estimated "
        f"{_fmt_s(plan.total_est_wall_s)} of training, about {_fmt_s(plan.total_est_wall_s / concurrency)} wall "
        f"at concurrency {concurrency} (at {plan.flops_per_s:.3g} FLOP/s per rank)"
    )
    return "\n".join(out)
