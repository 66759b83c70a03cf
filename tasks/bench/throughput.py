"""Training throughput and MFU of every architecture: `scaling bench throughput [--sizes t5 d256 d512 ...]`.

Each architecture trains the same grid points (by default the `tiny` ladder's largest size, t5, and two
wider GPT shapes, d256 = 4 layers x 256 and d512 = 6 x 512; the sample data, its sequence length and
batch) through the real training process, `tasks.train.launch.train_run`: DeepSpeed ZeRO, AdamW, bf16
autocast, the kernels' default paths. No Prefect or MLflow: they add nothing to a training step.

- tokens/s: the median of the rates the trainer logs (about 8 intervals a run), leaving out the
  first interval (first-step set-up) and the last (it holds the final evaluation);
- MFU: tokens/s x the model's training FLOPs per token (`flops_per_token`: Chinchilla App. F's matmul
  count, backward = 2x forward, as in the sweep's `flops` column) over the machine's bf16 matmul peak,
  measured here in the same run with the same thread count (the best of a few (2048 x 2048) @
  (2048 x 2048) bf16 matmuls; --peak-size sets the 2048: without bf16 units a CPU takes tens of
  seconds for each);
- vs transformer++: each architecture's tokens/s over Transformer++'s at the same size, measured in
  the same run (it always runs, first, whatever --archs says);
- est / run: the plan's time estimate for the run (tasks.plan: from the model's measured step on this
  machine) over the run's measured process time, start-up included.

Runs go to a temporary folder; the token cache to <output>/data, shared with sweeps. `--set` overrides
the sample sweep's fields, e.g. `--sizes t1 --steps 15 --peak-size 256
--set data.seq_len=32 --set train.batch_tokens=1024` for a tiny run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kernels import implementations
from models.ladders import ARCH_NAMES, LADDERS
from tasks.bench.table import print_table, ratio
from tasks.config import SweepConfig, load_sweep, parse_overrides, resolve_sweep_path
from tasks.data import prepare_data
from tasks.layout import Layout, RunDir
from tasks.plan import plan_sweep
from tasks.status import COMPLETED
from tasks.track.curves import read_curve
from tasks.train.launch import train_run

BASELINE = "transformer++"


def bf16_matmul_peak(threads: int, size: int = 2048, seconds: float = 2.0) -> float:
    """The best bf16 matmul FLOP/s over `seconds` of (size x size) products."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(2, size, size, dtype=torch.bfloat16)
    a @ b  # first-call set-up
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - t0))
    torch.set_num_threads(old)
    return best


def steady_tokens_per_s(run: RunDir) -> float:
    rates = read_curve(run.curve).column("tokens_per_s").to_pylist()
    if len(rates) < 3:
        raise SystemExit(f"{run.path}: {len(rates)} logged intervals; raise --steps for at least 3")
    return statistics.median(rates[1:-1])


# Wider than the tiny ladder, where the matmuls start to fill a CPU's units: the two GPT shapes the
# nanoGPT comparison used (issue 15: L4 d256, L6 d512), head dim 64.
WIDE = {
    "d256": {"name": "d256", "n_layer": 4, "d_model": 256, "n_head": 4, "lr": 1e-3},
    "d512": {"name": "d512", "n_layer": 6, "d_model": 512, "n_head": 8, "lr": 6e-4},
}
SIZES = [s["name"] for s in LADDERS["tiny"]] + list(WIDE)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scaling bench throughput", description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=list(ARCH_NAMES), choices=list(ARCH_NAMES))
    ap.add_argument("--sizes", nargs="+", default=["t5", "d256", "d512"], choices=SIZES)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--output", default=None, help="where the token cache goes (default: ./outputs)")
    ap.add_argument("--peak-size", type=int, default=2048, help="side of the bf16 matmuls timed for the peak")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the sample sweep, e.g. data.seq_len=32 for a tiny run (applied last)",
    )
    return ap


def bench_sweep(args: argparse.Namespace, archs: list[str]) -> SweepConfig:
    """The sample sweep cut to one grid point per architecture and size, trained for `--steps` steps."""
    sample, user = resolve_sweep_path("sample"), parse_overrides(args.set)
    batch_tokens = load_sweep(sample, user).train.batch_tokens
    fields = {
        "name": "bench-throughput",
        "architectures": archs,
        "ladder": [*LADDERS["tiny"], *WIDE.values()],
        "sizes": args.sizes,
        "tokens": {"counts": [args.steps * batch_tokens], "per_param": None},
        "lr": {"values": [1e-3]},
        "train.eval_interval": args.steps,
        "train.checkpoint_interval": args.steps + 1,
        "train.log_interval": max(1, args.steps // 8),
        "resources.concurrency": 1,
        "resources.threads_per_rank": args.threads,
    }
    return load_sweep(sample, {**fields, **user})


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The baseline always runs, first: every ratio is against its rate in this run.
    archs = [BASELINE, *(a for a in args.archs if a != BASELINE)]
    cfg = bench_sweep(args, archs)
    cache = prepare_data(cfg.data, Layout.at(args.output).data)
    peak = bf16_matmul_peak(args.threads, args.peak_size)
    print(
        f"sizes {', '.join(args.sizes)}, seq_len {cfg.data.seq_len}, {cfg.train.batch_tokens} tokens a step, "
        f"{args.steps} steps, {args.threads} threads; bf16 matmul peak {peak / 1e9:.3g} GFLOP/s"
    )
    print(f"kernels: {', '.join(f'{op} {impl}' for op, impl in implementations('cpu').items())}", flush=True)
    plan = plan_sweep(cfg)
    order = {(a, z): i for i, (z, a) in enumerate((z, a) for z in args.sizes for a in archs)}
    rows, rates = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in sorted(plan.runs, key=lambda s: order[s.arch, s.size]):
            run = RunDir(Path(tmp) / f"{spec.arch}-{spec.size}")
            result = train_run(spec, run, cache.dir, args.threads)
            if result.status != COMPLETED:
                raise SystemExit(f"{spec.arch} {spec.size}: {result.status} {result.message}")
            rate = rates[spec.arch, spec.size] = steady_tokens_per_s(run)
            wall = run.read_timing()["process_s"]
            print(f"  {spec.arch} {spec.size}: {rate:.0f} tokens/s", flush=True)
            rows.append(
                [
                    f"{spec.arch} {spec.size}",
                    f"{spec.n_params / 1e6:.2f}M",
                    f"{spec.flops_per_token / 1e9:.4f}",
                    f"{rate:.0f}",
                    f"{rate * spec.flops_per_token / peak:.1%}",
                    ratio(rate, rates[BASELINE, spec.size]),
                    f"{spec.est_wall_s:.1f}",
                    f"{wall:.1f}",
                    ratio(spec.est_wall_s, wall),
                ]
            )
    basis = "its models' measured steps" if plan.measured_steps else f"{plan.flops_per_s:.3g} FLOP/s"
    print_table(
        "steady tokens/s (median of the logged intervals); MFU against the peak above, for the FLOPs of each "
        f"model's flops_per_token (Chinchilla App. F's matmuls, 3x forward); the plan's estimate (from {basis}) "
        "against the run's measured process time",
        ["model", "params", "GFLOP/token", "tokens/s", "MFU", f"vs {BASELINE}", "est s", "run s", "est / run"],
        rows,
    )
    return 0
