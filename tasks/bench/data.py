"""Data pipeline figures: `scaling bench data [--tokenizer bpe:4096 --memory-corpus-mb 1024 ...]`.

1. Tokenization throughput: the train shards of a sample corpus (the whole Python standard
   library in Pile format, ~30 MB) written to a token file by `tasks.data.encode.write_tokens`, reading, parsing and
   writing included, with one process (the tokenizer on one thread) and with a worker per core:
   tokens/s of each, and the workers' speed-up over the one process (the baseline).
2. Loader wait: for every architecture at the largest `tiny` size, the time `train_batch` takes
   to draw a step's batch against the time of the training step itself (forward, backward, AdamW
   under bf16 autocast, as the trainer runs it, without DeepSpeed's bookkeeping, which would only
   lengthen the step), as the share of the step spent waiting for data. `--set` overrides the
   sample sweep's fields for it, e.g. `--set data.seq_len=32` for a tiny run.
3. Memory: a token cache built with `prepare_data` from a synthetic Pile corpus bigger than the
   memory the build is given (RLIMIT_DATA, which counts every private writable mapping, on the
   build process and each of its workers): the peak resident memory of the build process and of
   its largest worker (polled from /proc), as ratios against the corpus size.

Each measurement runs in its own subprocess, so none inherits another's memory or threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The tokenizing workers are spawned and import this module first: nothing heavy at its top.
from tasks.bench.table import print_table, ratio


def _run(kind: str, env: dict | None = None, limit_bytes: int | None = None, **kwargs) -> dict:
    """WORKERS[kind](**kwargs) in a fresh `scaling bench data --worker` process: what it returns."""

    def limit():
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))

    cmd = [sys.executable, "-m", "tasks.bench", "data", "--worker", kind, json.dumps(kwargs)]
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env={**os.environ, **(env or {})}, preexec_fn=limit
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


class ChildPeaks:
    """The largest peak resident set (VmHWM) among this process's children, polled from /proc while
    they live: getrusage's figure for children counts a spawned child's moment as a fork of this
    process, before it execs, so it reports this process's size instead."""

    def __init__(self, every_s: float = 0.2):
        self.peak_kib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(every_s,), daemon=True)
        self._thread.start()

    def _poll(self, every_s: float) -> None:
        me = str(os.getpid())
        while not self._stop.wait(every_s):
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                except OSError:
                    continue
                if fields.get("PPid", "").strip() == me and "VmHWM" in fields:
                    self.peak_kib = max(self.peak_kib, int(fields["VmHWM"].split()[0]))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


# ---------------------------------------------------------------- 1. tokenization throughput


def tokenize_worker(corpus: str, tokenizer: str, workers: int, out: str) -> dict:
    from tasks.data.corpus import iter_records
    from tasks.data.encode import write_tokens
    from tasks.data.tokenizer import end_token_id

    tok = _tokenizer(Path(corpus), tokenizer, Path(out).parent)
    t0 = time.perf_counter()
    wrote = write_tokens(tok, iter_records(Path(corpus), "train"), Path(out), "uint16", end_token_id(tok), workers)
    return {"tokens": wrote.tokens, "seconds": time.perf_counter() - t0}


def _tokenizer(corpus: Path, spec: str, cache: Path):
    from tasks.data.corpus import iter_documents
    from tasks.data.tokenizer import load_tokenizer

    return load_tokenizer(spec, lambda: iter_documents(corpus, "train"), cache)


def tokenization(corpus: Path, tokenizer: str, workers: int, tmp: Path) -> None:
    _tokenizer(corpus, tokenizer, tmp)  # trained once, outside the timings
    common = {"corpus": str(corpus), "tokenizer": tokenizer}
    single = _run("tokenize", env={"TOKENIZERS_PARALLELISM": "false"}, workers=1, out=str(tmp / "one.bin"), **common)
    parallel = _run("tokenize", workers=workers, out=str(tmp / "many.bin"), **common)
    if (tmp / "one.bin").read_bytes() != (tmp / "many.bin").read_bytes():
        raise SystemExit("the parallel build wrote different tokens from the single-process one")
    print_table(
        f"1. tokenization, {tokenizer}, {single['tokens']:,} tokens of a sample corpus's train shards "
        "(identical token files)",
        ["", "tokens/s", "s", "speed-up vs 1 process"],
        [
            [name, f"{r['tokens'] / r['seconds']:,.0f}", f"{r['seconds']:.1f}", ratio(single["seconds"], r["seconds"])]
            for name, r in (("1 process", single), (f"{workers} workers", parallel))
        ],
    )


# ---------------------------------------------------------------- 2. loader wait


def loader_worker(arch: str, size: str, threads: int, steps: int, output: str | None, overrides: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from models.registry import build_model, model_config
    from tasks.config import load_sweep, resolve_sweep_path
    from tasks.data import prepare_data
    from tasks.data.loader import train_batch
    from tasks.layout import Layout

    torch.set_num_threads(threads)
    cfg = load_sweep(resolve_sweep_path("sample"), {"architectures": [arch], "sizes": [size], **overrides})
    cache = prepare_data(cfg.data, Layout.at(output).data)
    size_cfg = next(s for s in cfg.size_ladder() if s.name == size)
    model = build_model(model_config(arch, size_cfg.model_dump(), cache.vocab_size, cfg.data.seq_len))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens, batch = cache.train_tokens(), cfg.train.batch_tokens // cfg.data.seq_len
    data_s = step_s = 0.0
    for step in range(steps + 2):
        t0 = time.perf_counter()
        x, y = train_batch(tokens, step, 0, 1, batch, cfg.data.seq_len, seed=0)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 2:  # the first steps pay one-time set-up
            data_s += t1 - t0
            step_s += time.perf_counter() - t1
    return {"data_ms": 1e3 * data_s / steps, "step_ms": 1e3 * step_s / steps, "batch": [batch, cfg.data.seq_len]}


def loader_wait(archs: list[str], size: str, threads: int, output: str | None, overrides: dict) -> None:
    rows, batch = [], None
    for arch in archs:
        r = _run("loader", arch=arch, size=size, threads=threads, steps=8, output=output, overrides=overrides)
        share, batch = r["data_ms"] / (r["data_ms"] + r["step_ms"]), r["batch"]
        rows.append([arch, f"{r['data_ms']:.2f}", f"{r['step_ms']:.1f}", f"{share:.2%}"])
    print_table(
        f"2. loader wait at size {size}, {threads} threads, batch {batch[0]} x {batch[1]} tokens; "
        "wait = batch / (batch + training step), both timed in the same process",
        ["arch", "batch ms", "step ms", "wait"],
        rows,
    )


# ---------------------------------------------------------------- 3. memory of a cache build


def synthetic_pile(root: Path, megabytes: int, shards: int = 4) -> int:
    """Pile-layout shards of random-word documents, `megabytes` of text in all; returns the bytes."""
    import numpy as np
    import zstandard

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = np.array(["".join(rng.choice(list("etaoinshrdlucmfw"), n)) for n in rng.integers(2, 9, 4096)])
    total, per_shard = 0, megabytes * 2**20 // shards
    cctx = zstandard.ZstdCompressor(level=1, threads=-1)
    for i, name in enumerate([*(f"{k:02d}" for k in range(shards)), "val"]):
        with open(root / f"{name}.jsonl.zst", "wb") as fh, cctx.stream_writer(fh) as out:
            written = 0
            while written < (per_shard if name != "val" else 2**20):
                text = " ".join(words[rng.integers(0, len(words), 2000)])
                line = json.dumps({"text": text, "meta": {"pile_set_name": f"set{i % 2}"}}).encode() + b"\n"
                out.write(line)
                written += len(line)
            total += written
    return total


def memory_worker(corpus: str, data_root: str) -> dict:
    from tasks.config import DataConfig
    from tasks.data import prepare_data

    children, t0 = ChildPeaks(), time.perf_counter()
    cfg = DataConfig(source="pile", path=corpus, tokenizer="bytes", val_tokens=65536, workers=os.cpu_count())
    cache = prepare_data(cfg, Path(data_root))
    return {
        "tokens": cache.n_train,
        "seconds": time.perf_counter() - t0,
        "worker_peak_mib": children.stop(),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def memory(megabytes: int, limit_mb: int, tmp: Path) -> None:
    corpus_bytes = synthetic_pile(tmp / "pile", megabytes)
    corpus_mib = corpus_bytes / 2**20
    # One OpenBLAS thread: its per-thread buffers would otherwise take most of a small limit.
    r = _run(
        "memory",
        env={"OPENBLAS_NUM_THREADS": "1"},
        limit_bytes=limit_mb * 2**20,
        corpus=str(tmp / "pile"),
        data_root=str(tmp / "data"),
    )
    print_table(
        f"3. cache build over {corpus_mib:,.0f} MiB of text ({r['tokens']:,} tokens, bytes tokenizer) "
        f"with {limit_mb} MiB of data memory per process (RLIMIT_DATA): {r['seconds']:.0f} s",
        ["", "MiB", "vs corpus"],
        [
            ["corpus text", f"{corpus_mib:.0f}", ratio(corpus_mib, corpus_mib)],
            ["build process, peak resident", f"{r['peak_mib']:.0f}", ratio(r["peak_mib"], corpus_mib)],
            ["largest worker, peak resident", f"{r['worker_peak_mib']:.0f}", ratio(r["worker_peak_mib"], corpus_mib)],
        ],
    )


WORKERS = {"tokenize": tokenize_worker, "loader": loader_worker, "memory": memory_worker}


def parser() -> argparse.ArgumentParser:
    from models.ladders import ARCH_NAMES

    ap = argparse.ArgumentParser(prog="scaling bench data", description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default="bpe:4096")
    ap.add_argument("--sample-mb", type=int, default=32, help="sample corpus size (32: the whole stdlib)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--size", default="t5")
    ap.add_argument("--archs", nargs="+", default=list(ARCH_NAMES), choices=list(ARCH_NAMES))
    ap.add_argument("--output", default=None, help="where the loader's token cache goes (default: ./outputs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sample sweep field")
    ap.add_argument("--memory-corpus-mb", type=int, default=512)
    ap.add_argument("--memory-limit-mb", type=int, default=256)
    ap.add_argument("--only", choices=["tokenize", "loader", "memory"])
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "KWARGS"), help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    from tasks.config import parse_overrides

    args = parser().parse_args(argv)
    if args.worker:
        kind, kwargs = args.worker
        print(json.dumps(WORKERS[kind](**json.loads(kwargs))))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "tokenize"):
            from tasks.data.sample_corpus import build_sample_corpus

            corpus = build_sample_corpus(Path(tmp) / "sample", args.sample_mb * 2**20)
            tokenization(corpus, args.tokenizer, args.workers, Path(tmp))
        if args.only in (None, "loader"):
            loader_wait(args.archs, args.size, args.workers, args.output, parse_overrides(args.set))
        if args.only in (None, "memory"):
            memory(args.memory_corpus_mb, args.memory_limit_mb, Path(tmp))
    return 0
