"""Plan: expand a SweepConfig into RunSpecs, count parameters and FLOPs, estimate time.

Nothing here trains or reads the corpus; bad input stops here, before any compute.
"""

from __future__ import annotations

import math

from models.registry import model_config
from tasks.config import ConfigError, SweepConfig
from tasks.data import check_data, vocab_size_for
from tasks.data.identity import data_identity
from tasks.plan import calibrate
from tasks.plan.estimate import fmt_count, fmt_lr, measure_flops_per_s, threads_per_rank
from tasks.plan.spec import Plan, RunSpec, run_id_of


def plan_sweep(cfg: SweepConfig, flops_per_s: float | None = None) -> Plan:
    """Every run of the sweep's grid as a RunSpec, or ConfigError naming what cannot run."""
    check_data(cfg.data)
    vocab = vocab_size_for(cfg.data)
    fps = flops_per_s or cfg.resources.flops_per_s or measure_flops_per_s(threads_per_rank(cfg))
    sizes = [s for s in cfg.size_ladder() if cfg.sizes is None or s.name in cfg.sizes]
    world = cfg.resources.ranks_per_run * cfg.resources.nodes_per_run
    seqs_per_rank = cfg.train.batch_tokens // cfg.data.seq_len // world
    micro = cfg.train.micro_batch_size or seqs_per_rank
    data = {**data_identity(cfg.data), "seq_len": cfg.data.seq_len}
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
        raise ConfigError("the grid has duplicate runs (repeated sizes, token budgets or learning rates)")
    measured = flops_per_s is None and calibrate.applies(cfg)
    if measured:
        runs = [calibrate.estimated(r, cfg.resources.startup_s, threads_per_rank(cfg), fps) for r in runs]
    return Plan(sweep=cfg.name, runs=runs, flops_per_s=fps, measured_steps=measured)


def _spec(cfg, arch, size, mcfg, steps, tokens, lr, seed, micro, seqs_per_rank, data, fps) -> RunSpec:
    world = cfg.resources.ranks_per_run * cfg.resources.nodes_per_run
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
        # DeepSpeed's checkpoints hold for one world size and ZeRO partitioning: other ones are another run.
        # How the ranks sit on nodes is not in it: 2 nodes of 1 rank resume what 1 node of 2 ranks saved.
        "ranks": world,
        "zero_stage": cfg.train.zero_stage,
        "data": data,
    }
    flops = fpt * tokens
    est = cfg.resources.startup_s + flops / (fps * world)
    return RunSpec(
        sweep=cfg.name,
        run_id=run_id_of(content),
        name=f"{arch}-{size}-{fmt_count(tokens)}-lr{fmt_lr(lr)}" + (f"-s{seed}" if len(cfg.seeds) > 1 else ""),
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
        ranks=world,
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
        nodes=cfg.resources.nodes_per_run,
    )
