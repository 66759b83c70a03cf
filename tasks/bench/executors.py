"""What each executor costs a grid point: `scaling bench executors [--executors local slurm ray] [--set ...]`.

The sample sweep cut to `--points` tiny runs (transformer++ on the tiny ladder's smallest sizes, one token
budget, one learning rate), trained one at a time (concurrency 1) by `scaling run` once per executor, each
into an output folder of its own that shares one token cache, built first and outside the timing. For
each executor: the sweep's wall time (planning, every point, the fits and the report), the training
processes' own seconds summed over the points (timing.json), and the overhead per point: the wall time
beyond local's, over the points. local, the baseline, runs first, after one untimed point on it: the first
sweep in an environment also builds DeepSpeed's op and Prefect's database, which no executor should pay.

slurm needs `sbatch` (and SLURM_CONF, where the site sets one) in the environment; ray the address of a
running instance (`--ray-address`, else Ray's RAY_ADDRESS, else Ray starts one of its own). The
executors' settings are the sweep's defaults unless `--set` changes them, e.g.
`--set cluster.slurm.poll_s=2`. On a machine without a cluster, `python -m tests.tasks.cluster.engines`
starts the tests' two-node Slurm and a Ray head to run it against.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks.bench.table import print_table, ratio
from tasks.config import load_sweep, parse_overrides, resolve_sweep_path
from tasks.data import prepare_data
from tasks.layout import Layout
from tasks.plan import plan_sweep

BASELINE = "local"
SIZES = ["t1", "t2", "t3", "t4", "t5"]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scaling bench executors", description=__doc__.splitlines()[0])
    ap.add_argument("--executors", nargs="+", default=["local", "slurm", "ray"], choices=["local", "slurm", "ray"])
    ap.add_argument("--points", type=int, default=2, choices=range(1, len(SIZES) + 1), help="grid points (sizes)")
    ap.add_argument("--ray-address", default=None, help="a running Ray's HOST:PORT (default: Ray's own rules)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep field")
    return ap


def overrides(args: argparse.Namespace) -> list[str]:
    """The sample sweep cut to `--points` tiny runs, one at a time, then the user's --set."""
    cut = [
        "name=bench-executors",
        f"sizes=[{', '.join(SIZES[: args.points])}]",
        "tokens.multipliers=[0.5]",
        "lr.values=[3.0e-3]",
        "data.sample_bytes=2000000",
        "resources.concurrency=1",
    ]
    return cut + list(args.set)


def run_sweep(executor: str, sets: list[str], out: Path, args: argparse.Namespace) -> float:
    """`scaling run` of the cut sweep on `executor` into `out`; its wall time in seconds."""
    sets = [*sets, f"resources.executor={executor}"]
    if executor == "ray" and args.ray_address:
        sets.append(f"cluster.ray.address={args.ray_address}")
    cmd = [str(Path(sys.executable).with_name("scaling")), "run", "sample", "--output", str(out)]
    cmd += [a for s in sets for a in ("--set", s)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(
            f"{executor}: scaling run exited {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return wall


def output(tmp: str, name: str, data: Path) -> Path:
    """An output folder of its own, whose token cache is `data`."""
    out = Path(tmp) / name
    out.mkdir()
    (out / "data").symlink_to(data)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    executors = [BASELINE, *(e for e in args.executors if e != BASELINE)]
    for needed, tool in (("slurm", "sbatch"), ("ray", "ray")):
        if needed in executors and not shutil.which(tool) and not Path(sys.executable).with_name(tool).exists():
            raise SystemExit(f"--executors {needed}: `{tool}` not found; install it or leave {needed} out")
    sets = overrides(args)
    cfg = load_sweep(resolve_sweep_path("sample"), parse_overrides(sets))
    specs = plan_sweep(cfg).runs
    print(f"{len(specs)} points ({', '.join(s.name for s in specs)}), one at a time", flush=True)
    rows, walls = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        shared = Path(tmp) / "data"
        prepare_data(cfg.data, shared)  # outside the timing: every executor reads this one cache
        run_sweep(BASELINE, [*sets, "sizes=[t1]", "name=bench-warm-up"], output(tmp, "warm-up", shared), args)
        for executor in executors:
            out = output(tmp, executor, shared)
            wall = walls[executor] = run_sweep(executor, sets, out, args)
            trained = sum(Layout.at(out).run(s.run_id).read_timing()["process_s"] for s in specs)
            per_point = (wall - walls[BASELINE]) / len(specs)
            print(f"  {executor}: {wall:.1f} s", flush=True)
            rows.append([executor, f"{wall:.1f}", f"{trained:.1f}", f"{per_point:+.1f}", ratio(wall, walls[BASELINE])])
    print_table(
        "the sweep's wall time; the training processes' seconds summed; overhead per point against local",
        ["executor", "wall s", "training s", "per point s", f"vs {BASELINE}"],
        rows,
    )
    return 0
