"""Training throughput and MFU of every architecture: `python -m tasks.bench_throughput [--size t5 ...]`.

Each architecture trains the same grid point (one `tiny` size, the sample data, its sequence
length and batch) through the real training process, `tasks.train.run_point`: DeepSpeed ZeRO,
AdamW, bf16 autocast, the kernels' default paths. No Prefect or MLflow: they add nothing to a
training step.

- tokens/s: the median of the rates the trainer logs every `log_interval` steps, leaving out the
  first interval (first-step set-up) and the last (it holds the final evaluation);
- MFU: tokens/s x the model's training FLOPs per token (`flops_per_token`, 6 N plus attention,
  as in the sweep's `flops` column) over the machine's bf16 matmul peak, measured here in the
  same run with the same thread count (the best of a few (2048 x 2048) @ (2048 x 2048) bf16
  matmuls);
- vs transformer++: each architecture's tokens/s over Transformer++'s, measured in the same run.

Runs go to a temporary folder; the token cache to <output>/data, shared with sweeps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kernels import implementations
from models.registry import ARCHITECTURES
from tasks.config import load_sweep, resolve_sweep_path
from tasks.data import prepare_data
from tasks.layout import Layout
from tasks.plan import plan_sweep
from tasks.track import read_curve
from tasks.train import run_point

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


def steady_tokens_per_s(run_dir: Path) -> float:
    rates = read_curve(run_dir / "curve").column("tokens_per_s").to_pylist()
    if len(rates) < 3:
        raise SystemExit(f"{run_dir}: {len(rates)} logged intervals; raise --steps for at least 3")
    return statistics.median(rates[1:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--size", default="t5", help="a size of the tiny ladder (default: its largest, t5)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default=None, help="where the token cache goes (default: ./outputs)")
    args = parser.parse_args()

    cfg = load_sweep(
        resolve_sweep_path("sample"),
        {
            "name": "bench-throughput",
            "architectures": args.archs,
            "sizes": [args.size],
            "tokens": {"counts": [args.steps * 4096], "per_param": None},
            "lr": {"values": [1e-3]},
            "train.eval_interval": args.steps,
            "train.checkpoint_interval": args.steps + 1,
            "resources.concurrency": 1,
            "resources.threads_per_rank": args.threads,
        },
    )
    cache = prepare_data(cfg.data, Layout.at(args.output).data)
    peak = bf16_matmul_peak(args.threads)
    print(
        f"size {args.size}, seq_len {cfg.data.seq_len}, {cfg.train.batch_tokens} tokens a step, {args.steps} steps, "
        f"{args.threads} threads; bf16 matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    print(f"kernels: {', '.join(f'{op} {impl}' for op, impl in implementations('cpu').items())}")
    print(f"{'arch':14} {'params':>8} {'GFLOP/token':>12} {'tokens/s':>9} {'MFU':>6} {'vs ' + BASELINE:>18}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in sorted(plan_sweep(cfg).runs, key=lambda s: s.arch != BASELINE):  # the baseline first
            run_dir = Path(tmp) / spec.arch
            result = run_point(spec, run_dir, cache.dir, args.threads)
            if result.status != "completed":
                raise SystemExit(f"{spec.arch}: {result.status} {result.message}")
            rate = steady_tokens_per_s(run_dir)
            results[spec.arch] = rate
            mfu = rate * spec.flops_per_token / peak
            base = f"x{rate / results[BASELINE]:.2f}" if BASELINE in results else "(not run)"
            print(
                f"{spec.arch:14} {spec.n_params / 1e6:7.2f}M {spec.flops_per_token / 1e9:12.4f} "
                f"{rate:9.0f} {mfu:6.1%} {base:>18}"
            )


if __name__ == "__main__":
    main()
