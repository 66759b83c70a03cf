"""Cost: the FLOP rate a rank achieves, the threads it gets, and the plan as a table with its totals."""

from __future__ import annotations

import json
import os
import time

from tasks.config import SweepConfig
from tasks.layout import Layout
from tasks.plan.gpus import gpu_lines
from tasks.plan.spec import Plan
from tasks.train.devices import runs_at_once


def fmt_count(x: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def fmt_lr(lr: float) -> str:
    """1.5e-3, 3e-4: how papers write learning rates (the run names read mamba-350m-7B-lr1.5e-3)."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


PROBE_SHARE = 0.06
"""The share of the matmul probe's rate that small models reach (narrow matmuls, optimizer, softmax, eval):
the sample sweep's tiny models achieved 13-20 GFLOP/s per thread where the probe measured about 280 on a
2-core CPU. Wider ones reach more, which is why a sweep that trains here is estimated from measured steps
instead (tasks.plan.calibrate)."""


def measure_flops_per_s(threads: int) -> float:
    """Training FLOP/s of one rank as PROBE_SHARE of a ~0.3 s bf16 matmul probe."""
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
    return PROBE_SHARE * n * 2 * 256**3 / dt


def threads_per_rank(cfg: SweepConfig) -> int:
    r = cfg.resources
    if r.threads_per_rank:
        return r.threads_per_rank
    return max(1, (os.cpu_count() or 1) // (runs_at_once(r) * r.ranks_per_run))


def _fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def run_states(plan: Plan, layout: Layout) -> dict[str, str]:
    """run_id -> what a run of the sweep would do with it (RunDir.state). A new run whose point was trained
    at another world size says so: DeepSpeed's checkpoints hold for one, so that progress is not resumed."""
    states = {r.run_id: layout.run(r.run_id).state() for r in plan.runs}
    new = {r.name: r for r in plan.runs if states[r.run_id] == "new"}
    for spec_file in layout.runs.glob("*/spec.json") if new and layout.runs.is_dir() else ():
        try:
            other = json.loads(spec_file.read_text())
        except (OSError, ValueError):
            continue
        r = new.get(other.get("name"))
        if r and other.get("sweep") == r.sweep and other.get("ranks") != r.ranks:
            was = layout.run(spec_file.parent.name).state()
            if was != "new":
                states[r.run_id] = f"new: {was} at {other['ranks']} ranks is another run, not resumed at {r.ranks}"
    return states


def format_plan(plan: Plan, concurrency: int, mfu: float, states: dict[str, str] | None = None) -> str:
    """The grid as a fixed-width table, with the sweep's totals and its GPU-hours at `mfu`; `states`
    (run_id -> RunDir.state) adds what a run of the sweep would do with each run."""
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
        *(["state"] if states else []),
    ]
    rows = [
        [
            r.run_id,
            r.arch,
            r.size,
            str(r.n_layer),
            str(r.d_model),
            fmt_count(r.n_params),
            fmt_count(r.n_params_nonembed),
            fmt_count(r.tokens),
            f"{r.lr:.3g}",
            str(r.steps),
            f"{r.flops:.3g}",
            _fmt_s(r.est_wall_s),
            *([states[r.run_id]] if states else []),
        ]
        for r in plan.runs
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:  # text columns flush left, numbers flush right
        return "  ".join(c.rjust(w) if 3 <= i < 12 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(head), line(["-" * w for w in widths]), *map(line, rows)]
    out.append("")
    basis = "from each model's measured step" if plan.measured_steps else f"at {plan.flops_per_s:.3g} FLOP/s per rank"
    out.append(
        f"{len(plan.runs)} runs, {plan.total_flops:.3g} training FLOPs, estimated "
        f"{_fmt_s(plan.total_est_wall_s)} of training, about {_fmt_s(plan.total_est_wall_s / concurrency)} wall "
        f"at concurrency {concurrency} ({basis})"
    )
    if states:
        resuming = sum(s.startswith("resume") for s in states.values())
        new = sum(s.startswith("new") for s in states.values())
        out.append(f"{len(states) - resuming - new} finished (skipped), {resuming} resuming, {new} new")
    out += gpu_lines(plan, mfu)
    return "\n".join(out)
