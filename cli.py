"""`scaling`: plan, run, fit and report scaling-law sweeps.

scaling plan CONFIG [--set key=value ...]          the grid and its cost; no compute
scaling run CONFIG [--output DIR] [--set k=v ...]   the scaling-sweep flow, locally
scaling fit RUNS.parquet|.csv [--out FITS.json]     refit recorded runs, no training (scaling fit -h)
scaling report SWEEP_DIR [SWEEP_DIR ...]            re-render a report (several sweeps: one report), no training
scaling doctor [--quick] [--only ROW] [--list]      the fault suite: each fault, whether it fired, the outcome
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# The temporary Prefect server's telemetry heartbeat races the first writes to its fresh SQLite
# database and prints a "database is locked" traceback; it also cannot reach out from air-gapped hosts.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect waits 20 s for its temporary server by default; a busy 2-core machine can need more.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def cmd_plan(args) -> int:
    from tasks.config import load_sweep, parse_overrides, resolve_sweep_path
    from tasks.layout import Layout
    from tasks.plan import format_plan, plan_sweep, run_states
    from tasks.train.devices import runs_at_once

    cfg = load_sweep(resolve_sweep_path(args.config), parse_overrides(args.set))
    plan, layout = plan_sweep(cfg), Layout.at(args.output)
    states = run_states(plan, layout)
    print(format_plan(plan, runs_at_once(cfg.resources), cfg.resources.mfu, states))
    return 0


def cmd_run(args) -> int:
    from flows.scaling_sweep import scaling_sweep
    from tasks import status as st
    from tasks.config import parse_overrides

    t0 = time.time()
    outcome = scaling_sweep(sweep=args.config, output=args.output, overrides=parse_overrides(args.set))
    counts = ", ".join(f"{n} {status}" for status, n in outcome.counts.items())
    print(f"\nsweep finished in {time.time() - t0:.0f} s: {counts}\nreport: {outcome.report['html']}")
    if outcome.counts.get(st.FAILED):
        print("some runs failed (see the runs table's message column); run the sweep again to resume them")
        return 1
    return 0


def cmd_fit(args) -> int:
    from reports.summary import summary_lines
    from tasks.config import fit_config
    from tasks.fit import fit_file, load_runs
    from tasks.layout import SweepDir

    runs = Path(args.runs)
    out = Path(args.out) if args.out else runs.with_name(SweepDir.FITS)
    # Only the flags given: FitConfig's defaults (and its messages, naming the field) for the rest.
    flags = {
        "budgets": args.budgets.split(",") if args.budgets else None,
        "starts": args.starts,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "held_out": args.held_out,
        "reference_arch": args.reference,
        "outliers": None if args.drop_highest is None else {"drop_highest": args.drop_highest},
    }
    config = fit_config({k: v for k, v in flags.items() if v is not None}, "scaling fit")
    fits = fit_file(runs, out, config)
    print("\n".join(f"- {line}" for line in summary_lines(load_runs(runs), fits)))
    print(f"\nfits: {out}")
    return 0


def cmd_report(args) -> int:
    from tasks.layout import SweepDir
    from tasks.report import report_sweeps

    report = report_sweeps([SweepDir(Path(d)) for d in args.sweep_dirs], args.out, args.title, pdf=args.pdf)
    print(f"report: {report['html']}\nmarkdown: {report['md']}")
    if report["pdf"]:
        print(f"pdf: {report['pdf']}")
    elif args.pdf:
        print(f"warning: {report['pdf_error']}", file=sys.stderr)
    return 0


def cmd_doctor(args) -> int:
    from tasks.doctor import run

    return run(quick=args.quick, only=args.only, list_only=args.list, workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from tasks.config import ConfigError
    from tasks.data import DataError

    try:
        if argv[:1] == ["bench"]:
            # Everything after NAME is the benchmark's own flags, --help included, which argparse would claim.
            from tasks.bench import main as bench

            return bench(argv[1:])
        return _dispatch(argv)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _dispatch(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="scaling", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("plan", "run"):
        p = sub.add_parser(name)
        p.add_argument("config", help="sweep file, e.g. deployments/sweeps/sample.yaml (or just 'sample')")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep field")
        p.add_argument("--output", default=None, help="output folder (default: $SCALING_OUTPUT or ./outputs)")
    p = sub.add_parser("fit")
    p.add_argument("runs", help="runs.parquet (or .csv) with n_params, tokens, val_loss")
    p.add_argument("--out", help="where to write fits.json (default: beside the runs table)")
    p.add_argument("--budgets", help="comma-separated FLOP budgets for predictions, e.g. 1e19,1e20")
    p.add_argument("--starts", help="L-BFGS starts for L(N, D): 'full' (Chinchilla's 4500, the default) or fewer")
    p.add_argument("--bootstrap", help="resamples behind each 95%% interval (default 200; 0: no intervals)")
    p.add_argument("--seed", help="seed of the bootstrap (default 0)")
    p.add_argument("--drop-highest", metavar="K", help="per architecture, leave out the K runs with the highest loss")
    p.add_argument(
        "--no-held-out",
        dest="held_out",
        action="store_const",
        const=False,
        help="skip the refit without the largest compute scale",
    )
    p.add_argument("--reference", help="architecture the compute multipliers are against (default transformer++)")
    p = sub.add_parser("report")
    p.add_argument(
        "sweep_dirs",
        nargs="+",
        metavar="SWEEP_DIR",
        help="a sweep's folder, e.g. outputs/sweeps/sample; several share one report, on the same axes",
    )
    p.add_argument("--out", help="report folder (default: SWEEP_DIR/report; for several, OUTPUT/comparisons/A+B)")
    p.add_argument("--title", help="the report's title (default: the sweep names)")
    p.add_argument("--no-pdf", dest="pdf", action="store_false", help="skip the PDF (it needs Chromium)")
    p = sub.add_parser("doctor", help="run the fault suite against this installation and print its table")
    p.add_argument("--quick", action="store_true", help="one case per row (4 minutes instead of 9 on a 2-core CPU)")
    p.add_argument("--only", metavar="ROW", help="run one row (see --list)")
    p.add_argument("--list", action="store_true", help="say which tests each row runs, and run none")
    p.add_argument("--workers", type=int, metavar="N", help="test processes at once (default: one per CPU)")
    sub.add_parser("bench", add_help=False)  # for `scaling -h`; main() hands `scaling bench ...` to tasks.bench
    args = ap.parse_args(argv)
    return {"plan": cmd_plan, "run": cmd_run, "fit": cmd_fit, "report": cmd_report, "doctor": cmd_doctor}[args.cmd](
        args
    )


if __name__ == "__main__":
    sys.exit(main())
