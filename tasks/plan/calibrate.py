"""Time estimates from a measured step: where the sweep trains on this machine's CPU, one training step of
each model (its run's micro-batch, sequence length, precision and threads: forward, cross-entropy,
backward, AdamW) is timed once and remembered, and a run's estimate is

    startup_s + steps x (grad_accum x micro-step) + evaluations x (val_tokens' forward passes)

A matmul probe says what the CPU can do at best; tiny models reach a few percent of it and wide ones
most of it, so no one factor on it holds across a ladder. The step itself does.

The cache is a JSON file ($SCALING_STEP_CACHE, else ~/.cache/scaling/steps.json), keyed by the model,
the micro-batch, precision, threads, torch and the CPU: another machine measures its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path

from tasks.atomic import write_atomic
from tasks.plan.estimate import PROBE_SHARE

MEASURE_S = 0.5
"""Steps are timed for at least this long, after one warm-up step."""
LONGEST_PROBE_S = 5.0
"""A model whose step would take longer than this even at the matmul probe's full rate is not measured
(a GPU sweep planned on a laptop)."""


def cache_file() -> Path:
    return Path(os.environ.get("SCALING_STEP_CACHE", Path.home() / ".cache" / "scaling" / "steps.json"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def micro_step_s(arch: str, model: dict, micro: int, seq_len: int, precision: str, threads: int) -> float:
    """Seconds of one training micro-step of the model on this CPU, measured once per machine and cached."""
    import torch

    key = json.dumps([arch, model, micro, seq_len, precision, threads, torch.__version__, cpu_name()])
    key = hashlib.sha256(key.encode()).hexdigest()[:20]
    try:
        cached = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        cached[key] = _measure(arch, model, micro, seq_len, precision, threads)
        try:
            write_atomic(cache_file(), json.dumps(cached))
        except OSError:  # a read-only home: measured again next time
            pass
    return cached[key]


def _measure(arch: str, model: dict, micro: int, seq_len: int, precision: str, threads: int) -> float:
    import torch
    import torch.nn.functional as F

    from models.registry import build_model, config_from_dict

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        config = config_from_dict(arch, model)
        net = build_model(config)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x = torch.randint(0, config.vocab_size, (micro, seq_len + 1), generator=torch.Generator().manual_seed(0))
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

        def step() -> None:
            with autocast:
                logits = net(x[:, :-1])
            F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # first-call set-up: allocations, kernel builds
        n, start = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - start < MEASURE_S:
            step()
            n += 1
        return (time.perf_counter() - start) / n
    finally:
        torch.set_num_threads(old)


def applies(cfg) -> bool:
    """Whether a sweep (a SweepConfig) is estimated from measured steps: it trains here, on the CPU, and
    names no FLOP rate of its own (resources.flops_per_s)."""
    import torch

    local = cfg.resources.executor == "local"
    return cfg.resources.flops_per_s is None and local and not torch.cuda.is_available()


def estimated(spec, startup_s: float, threads: int, flops_per_s: float):
    """The RunSpec with its estimate from its model's measured step, unless that step would take past
    LONGEST_PROBE_S even at the probe's full rate, flops_per_s / PROBE_SHARE (then the FLOP-rate estimate
    stands)."""
    at_best = flops_per_s / PROBE_SHARE * spec.ranks
    if spec.flops_per_token * spec.batch_tokens / at_best > LONGEST_PROBE_S:
        return spec
    return dataclasses.replace(spec, est_wall_s=run_seconds(spec, startup_s, threads))


def run_seconds(spec, startup_s: float, threads: int) -> float:
    """A run's estimated wall time from its model's measured step (`spec`: a RunSpec)."""
    micro = micro_step_s(spec.arch, spec.model, spec.micro_batch_size, spec.seq_len, spec.precision, threads)
    evals = math.ceil(spec.steps / spec.eval_interval)
    # An evaluation is forward passes over val_tokens: about a third of a training step's work per token.
    eval_s = spec.val_tokens / (spec.micro_batch_size * spec.seq_len) * micro / 3
    return startup_s + spec.steps * spec.grad_accum * micro + evals * eval_s
