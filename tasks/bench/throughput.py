"""Training throughput and MFU of every architecture: `scaling bench throughput [--size t5 ...]`.

Each architecture trains the same grid point (one `tiny` size, the sample data, its sequence
length and batch) through the real training process, `tasks.train.launch.train_run`: DeepSpeed ZeRO,
AdamW, bf16 autocast, the kernels' default paths. No Prefect or MLflow: they add nothing to a
training step.

- tokens/s: the median of the rates the trainer logs every `log_interval` steps, leaving out the
  first interval (first-step set-up) and the last (it holds the final evaluation);
- MFU: tokens/s x the model's training FLOPs per token (`flops_per_token`, 6 N plus attention,
  as in the sweep's `flops` column) over the machine's bf16 matmul peak, measured here in the
  same run with the same thread count (the best of a few (2048 x 2048) @ (2048 x 2048) bf16
  matmuls; --peak-size sets the 2048: without bf16 units a CPU takes tens of seconds for each);
- vs transformer++: each architecture's tokens/s over Transformer++'s, measured in the same run
  (it always runs, first, whatever --archs says).

Runs go to a temporary folder; the token cache to <output>/data, shared with sweeps. `--set` overrides
the sample sweep's fields, e.g. `--size t1 --steps 15 --peak-size 256
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
from models.ladders import ARCH_NAMES
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


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scaling bench throughput", description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=list(ARCH_NAMES), choices=list(ARCH_NAMES))
    ap.add_argument("--size", default="t5", help="a size of the tiny ladder (default: its largest, t5)")
    ap.add_argument("--steps", type=int, default=40)
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
    """The sample sweep cut to one grid point per architecture, trained for `--steps` steps."""
    sample, user = resolve_sweep_path("sample"), parse_overrides(args.set)
    batch_tokens = load_sweep(sample, user).train.batch_tokens
    fields = {
        "name": "bench-throughput",
        "architectures": archs,
        "sizes": [args.size],
        "tokens": {"counts": [args.steps * batch_tokens], "per_param": None},
        "lr": {"values": [1e-3]},
        "train.eval_interval": args.steps,
        "train.checkpoint_interval": args.steps + 1,
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
        f"size {args.size}, seq_len {cfg.data.seq_len}, {cfg.train.batch_tokens} tokens a step, {args.steps} steps, "
        f"{args.threads} threads; bf16 matmul peak {peak / 1e9:.3g} GFLOP/s"
    )
    print(f"kernels: {', '.join(f'{op} {impl}' for op, impl in implementations('cpu').items())}", flush=True)
    rows, rates = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in sorted(plan_sweep(cfg).runs, key=lambda s: archs.index(s.arch)):
            run = RunDir(Path(tmp) / spec.arch)
            result = train_run(spec, run, cache.dir, args.threads)
            if result.status != COMPLETED:
                raise SystemExit(f"{spec.arch}: {result.status} {result.message}")
            rate = rates[spec.arch] = steady_tokens_per_s(run)
            print(f"  {spec.arch}: {rate:.0f} tokens/s", flush=True)
            rows.append(
                [
                    spec.arch,
                    f"{spec.n_params / 1e6:.2f}M",
                    f"{spec.flops_per_token / 1e9:.4f}",
                    f"{rate:.0f}",
                    f"{rate * spec.flops_per_token / peak:.1%}",
                    ratio(rate, rates[BASELINE]),
                ]
            )
    print_table(
        "steady tokens/s (median of the logged intervals); MFU against the peak above",
        ["arch", "params", "GFLOP/token", "tokens/s", "MFU", f"vs {BASELINE}"],
        rows,
    )
    return 0
