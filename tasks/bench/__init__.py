"""Benchmarks behind one door: `scaling bench NAME [ARGS...]` (or `python -m tasks.bench NAME ...`).

Scripts, not tests. One convention for all: each measures its baseline (the reference path, or the
baseline it names) in the same run as what it compares with it, and prints fixed-width tables
(`tasks.bench.table`) with ratio columns against that baseline. `scaling bench --help` lists them;
`scaling bench NAME --help` gives one's flags, and its module's docstring what it measures.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one line). The modules are imported only when run: they pull in torch, scipy or
# DeepSpeed, and the workers the data benchmark spawns import the parent's main module again.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "scan": ("tasks.bench.scan", "selective scan: reference vs chunked and C kernel, fwd+bwd time and memory"),
    "wkv": ("tasks.bench.wkv", "WKV: reference vs the chunked path, fwd+bwd time"),
    "fftconv": ("tasks.bench.fftconv", "Hyena's long convolution: Toeplitz reference vs rfft, fwd+bwd time"),
    "throughput": ("tasks.bench.throughput", "training tokens/s and MFU per architecture, vs transformer++"),
    "data": ("tasks.bench.data", "tokenization (1 process vs workers), loader wait, cache-build memory"),
    "fit": ("tasks.bench.fit", "the L(N, D) fit: batched search vs a plain scipy loop, and its bootstrap"),
    "gpu": ("tasks.bench.gpu", "the GPU path: Triton scan vs reference and chunked, MFU per model, a sweep on it"),
    "executors": ("tasks.bench.executors", "a tiny sweep's wall time on local, Slurm and Ray; overhead per point"),
}


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = ["usage: scaling bench NAME [ARGS...]    (scaling bench NAME --help: its flags)", "", "benchmarks:"]
    return "\n".join([*lines, *(f"  {name:{width}}  {line}" for name, (_, line) in BENCHMARKS.items())])


def main(argv: list[str] | None = None) -> int:
    """Run benchmark NAME with the rest of argv as its flags; list them on --help or with no NAME."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    name, *args = argv
    if name not in BENCHMARKS:
        print(f"scaling bench: unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[name][0]).main(args)
