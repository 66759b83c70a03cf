"""The GPU path measured: `scaling bench gpu [--dry-run] [--parts scan train e2e]`, or on a GPU image without
the project installed, `python3 -m tasks.bench gpu` from the tree.

1. The selective scan on CUDA (tasks.bench.gpu_scan): the Triton forward and backward against the reference,
   the output and all 8 gradients in fp32 and bf16; their speed against the chunked PyTorch path at
   (b, L, d, n) = (8, 2048, 1536, 16) and (8, 8192, 1536, 16), a Mamba 125M layer's width.
2. Training throughput (tasks.bench.gpu_train): tokens/s and MFU against the bf16 matmul peak measured in
   the same run, for Transformer++ 125M and 350M at 2K, Mamba 125M at 2K and 8K against Transformer++ 125M
   at each, and Hyena and RWKV 125M at 2K; the largest micro-batch of at most 64K tokens that fits.
3. End to end: a tiny sweep through `scaling run` (python -m cli run) on the device, where the pipeline's
   packages import; otherwise it names the ones that do not.

Then each published target, met or not. Parts 1 and 2 import only torch, triton, models/ and kernels/.
`--dry-run` runs the same code on the CPU at toy sizes (the Triton kernels under Triton's interpreter,
tiny-ladder models, 256-token micro-batches) in a few minutes; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.bench import gpu_scan, gpu_train
from tasks.bench.gpu_train import Point
from tasks.bench.table import print_table

ROOT = Path(__file__).resolve().parents[2]
# What `scaling run` imports (pyproject's dependencies, by import name).
STACK = ("deepspeed", "prefect", "mlflow", "pydantic", "pyarrow", "pandas", "scipy", "matplotlib", "jinja2", "yaml")
STACK += ("tokenizers", "zstandard", "pyfaidx", "threadpoolctl")


@dataclass(frozen=True)
class Sizes:
    device: str
    check: tuple[int, int, int, int]
    speed: list[tuple[int, int, int, int]]
    ladder: str
    points: list[Point]
    tokens: int
    peak_side: int
    warmup: int
    reps: int


def _points(small: str, large: str, short: int, long: int) -> list[Point]:
    t, m = "transformer++", "mamba"
    return [Point(t, small, short), Point(t, large, short), Point(m, small, short), Point(t, small, long)] + [
        Point(m, small, long),
        Point("hyena", small, short),
        Point("rwkv", small, short),
    ]


FULL = Sizes("cuda", (2, 512, 256, 16), [(8, 2048, 1536, 16), (8, 8192, 1536, 16)], "paper",
             _points("125m", "350m", 2048, 8192), 65536, 8192, 3, 10)  # fmt: skip
DRY = Sizes("cpu", (1, 9, 6, 5), [(1, 16, 8, 4)], "tiny", _points("t1", "t2", 32, 128), 256, 256, 1, 2)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scaling bench gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="the same code on the CPU at toy sizes")
    ap.add_argument("--parts", nargs="+", default=["scan", "train", "e2e"], choices=["scan", "train", "e2e"])
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.dry_run and "scan" in args.parts and os.environ.get("TRITON_INTERPRET") != "1":
        # Triton reads TRITON_INTERPRET when it defines the kernels, at import: a fresh process sets it first.
        cmd = [sys.executable, "-m", "tasks.bench", "gpu", *argv]
        return subprocess.call(cmd, cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"})
    sizes = DRY if args.dry_run else FULL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("scaling bench gpu: no CUDA device here; --dry-run runs the same code on the CPU")
    print(describe(sizes.device), flush=True)
    targets: list[list[str]] = []
    if "scan" in args.parts:
        within = gpu_scan.check(sizes.check, sizes.device)
        speedups = gpu_scan.speed(sizes.speed, sizes.device, sizes.warmup, sizes.reps)
        targets.append(["Triton scan within fp32 (and bf16) tolerance of the reference", "", met(within)])
        shown = ", ".join(f"{s:.2f}x" for s in speedups)
        targets.append(["Triton scan faster than the chunked path", shown, met(min(speedups) > 1)])
    if "train" in args.parts:
        targets += train(sizes)
    if "e2e" in args.parts:
        end_to_end(sizes.device)
    if targets:
        print_table("targets (issue 14, from published anchors)", ["target", "measured", "met"], targets)
    return 0


def describe(device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    triton = importlib.util.find_spec("triton") and __import__("triton").__version__
    cuda = f", CUDA {torch.version.cuda}" if device == "cuda" else ""
    interpreted = ", Triton interpreted" if os.environ.get("TRITON_INTERPRET") == "1" else ""
    versions = f"Python {platform.python_version()}, torch {torch.__version__}{cuda}, triton {triton}{interpreted}"
    return f"{device}: {name}; {versions}"


def met(ok: bool) -> str:
    return "yes" if ok else "NO"


def train(sizes: Sizes) -> list[list[str]]:
    peak = gpu_train.matmul_peak(sizes.device, sizes.peak_side)
    print(f"\ntraining {len(sizes.points)} models, one at a time:", flush=True)
    results = []
    for point in sizes.points:
        results.append(
            gpu_train.measure(point, sizes.ladder, sizes.device, sizes.tokens, sizes.warmup, sizes.reps, peak)
        )
        print(f"  {point.arch} {point.size} at {point.seq_len}: {results[-1].tokens_per_s:,.0f} tokens/s", flush=True)
    gpu_train.report(results, peak, sizes.device)
    by = {(r.point.arch, r.point.size, r.point.seq_len): r for r in results}
    small, large = sizes.points[0].size, sizes.points[1].size
    short, long = sizes.points[0].seq_len, sizes.points[3].seq_len
    t_small, t_large = by["transformer++", small, short], by["transformer++", large, short]
    m_short = by["mamba", small, short].tokens_per_s / t_small.tokens_per_s
    m_long = by["mamba", small, long].tokens_per_s / by["transformer++", small, long].tokens_per_s
    return [
        [f"Transformer++ {small}: MFU >= 45%", f"{t_small.mfu:.1%}", met(t_small.mfu >= 0.45)],
        [f"Transformer++ {large}: MFU >= 50%", f"{t_large.mfu:.1%}", met(t_large.mfu >= 0.50)],
        [f"Mamba {small} at {short}: >= 0.8x Transformer++'s tokens/s", f"{m_short:.2f}x", met(m_short >= 0.8)],
        [f"Mamba {small} at {long}: faster than Transformer++", f"{m_long:.2f}x", met(m_long > 1)],
    ]


def end_to_end(device: str) -> None:
    """A tiny sweep through `scaling run`, on this machine's device, where the pipeline imports."""
    missing = [m for m in STACK if importlib.util.find_spec(m) is None]
    if missing:
        print(f"\nend to end: not run; these of the pipeline's packages do not import here: {', '.join(missing)}")
        return
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        sweep = Path(tmp) / "tiny.yaml"
        sweep.write_text(TINY_SWEEP.format(corpus=Path(tmp) / "corpus"))
        cmd = [sys.executable, "-m", "cli", "run", str(sweep), "--output", str(Path(tmp) / "out")]
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        logs = "".join(p.read_text() for p in (Path(tmp) / "out" / "runs").glob("*/train.log"))
    finished = re.search(r"sweep finished in .*", proc.stdout)
    on = sorted(set(re.findall(r"rank\(s\) on (\w+)", logs)))
    print(f"\nend to end: `scaling run` of a 2-run tiny sweep, exit {proc.returncode} in {wall:.0f} s; ranks on {on}")
    print(finished.group(0) if finished else proc.stdout[-2000:] + proc.stderr[-2000:])
    if proc.returncode or on != [device]:
        raise SystemExit(f"end to end: expected the runs to train on {device}")


TINY_SWEEP = """
name: bench-gpu
data: {{source: sample, path: {corpus}, tokenizer: "bpe:320", seq_len: 32, val_tokens: 4096, sample_bytes: 400000}}
architectures: [transformer++, mamba]
ladder: tiny
sizes: [t1]
tokens: {{per_param: 1, multipliers: [0.5]}}
lr: {{values: [3.0e-3]}}
train: {{batch_tokens: 1024, eval_interval: 20, checkpoint_interval: 20, log_interval: 5}}
resources: {{concurrency: 1, threads_per_rank: 1}}
fit: {{starts: 8}}
"""
