"""`scaling doctor [--quick]`: run the fault suite against this installation and print its table.

The rows are the tests themselves: each test of a row carries `@pytest.mark.fault(row)`, injects its fault,
checks that it fired (the `fired` fixture of tests/conftest.py, which records it) and asserts the outcome. CI
runs them as tests; the doctor runs the same ones through pytest and reads back, per row, whether every fault
fired, whether every test passed, and how long it took. `--quick` runs the one test per row marked
`quick=True`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tasks

ROOT = Path(tasks.__file__).resolve().parent.parent

# The fault suite of issue 11, in its order: row -> what is done to the pipeline.
ROWS = {
    "kills": "SIGKILL the training process group at 3 seeded steps",
    "save_kill": "kill during a checkpoint save",
    "corrupt_ckpt": "corrupt the newest checkpoint",
    "non_finite": "inf gradients, NaN loss, NaN from step k on",
    "spike": "loss spike x10 for one step",
    "mlflow": "MLflow server down for a whole run, and flapping",
    "sqlite": "8 concurrent first runs on a fresh SQLite store",
    "flow_kill": "SIGKILL the flow process, and the worker",
    "cancel": "cancel during training",
    "twice": "the same grid point launched twice at once",
    "parquet": "killed writer, flipped bytes, deleted part, stray temp",
    "disk_full": "disk full in a checkpoint save and a Parquet write",
    "identity": "corpora one byte apart; one corpus at two paths",
}


@dataclass
class Row:
    tests: list[str] = field(default_factory=list)
    fired: list[bool] = field(default_factory=list)  # one per test: every fault it injected took effect
    outcomes: list[str] = field(default_factory=list)  # one per test: passed, failed or skipped
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def fired_word(self) -> str:
        return "yes" if self.fired and all(self.fired) else "no"

    def outcome(self) -> str:
        if not self.tests:
            return "missing"
        if "failed" in self.outcomes or len(self.outcomes) < len(self.tests):
            return "fail"
        if "skipped" in self.outcomes:
            return "skipped"
        return "pass" if self.fired_word() == "yes" else "fail"


class Collector:
    """A pytest plugin: keeps the fault tests (the quick ones with --quick, one row's with --only), groups
    them by row, and prints a line as each one ends."""

    def __init__(self, quick: bool, only: str | None):
        self.quick, self.only = quick, only
        self.rows = {name: Row() for name in ROWS}
        self.problems: list[str] = []  # fault marks that name no row, test files that could not be collected
        self._row_of: dict[str, list[str]] = {}

    def pytest_collection_modifyitems(self, config, items):
        if self._row_of:  # the run after the collection: its items are the tests chosen then
            return
        keep, drop = [], []
        for item in items:
            marks = list(item.iter_markers("fault"))  # `fault(row, quick=...)`, on the test or on one of its params
            rows = sorted({r for m in marks for r in m.args if r in ROWS}, key=list(ROWS).index)
            quick = {r for m in marks if m.kwargs.get("quick") for r in m.args}
            self.problems += [f"{item.nodeid}: no row {r!r}" for m in marks for r in m.args if r not in ROWS]
            rows = [r for r in rows if (not self.quick or r in quick) and (not self.only or r == self.only)]
            (keep if rows else drop).append(item)
            for r in rows:
                self.rows[r].tests.append(item.nodeid)
            self._row_of[item.nodeid] = rows
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

    def pytest_collectreport(self, report):
        if report.failed:
            self.problems.append(f"{report.nodeid}: could not be collected: {_reason(report)}")

    def pytest_runtest_logreport(self, report):
        rows = [self.rows[r] for r in self._row_of.get(report.nodeid, ())]
        records = [ok for key, (ok, _) in (p for p in report.user_properties if p[0] == "fired")]
        fired = bool(records) and all(records)  # each phase's report carries the test's records so far
        for row in rows:
            row.seconds += report.duration
        if report.failed or report.skipped or report.when == "call":
            outcome = "skipped" if report.skipped else report.outcome
            for row in rows:
                row.outcomes.append(outcome)
                row.fired.append(fired and outcome != "skipped")
                if outcome != "passed":
                    row.failures.append(f"{report.nodeid} {outcome}: {_reason(report)}")
            print(f"  {outcome:7} {report.duration:6.1f} s  {report.nodeid}", flush=True)


def _reason(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2]
    text = str(report.longrepr or "").strip().splitlines()
    return " / ".join([line[1:].strip() for line in text if line.startswith("E ")][:4]) or (text[-1] if text else "")


def table(rows: dict[str, Row]) -> str:
    lines = [f"{'fault':56} {'fired':5}  {'outcome':8} {'time':>7}"]
    for name, row in rows.items():
        lines.append(f"{ROWS[name]:56} {row.fired_word():5}  {row.outcome():8} {row.seconds:6.0f}s")
    return "\n".join(lines)


def run(quick: bool = False, only: str | None = None, list_only: bool = False, workers: int | None = None) -> int:
    """Run the suite (or, with list_only, say what it would run); 0 when every row chosen passes."""
    import pytest

    tests = ROOT / "tests"
    if not (tests / "conftest.py").exists():
        raise FileNotFoundError(
            f"{tests}: the fault suite is the project's tests, and this installation has none; "
            "install from a clone of the repository (pip install -e .) and run `scaling doctor` there"
        )
    if only is not None and only not in ROWS:
        raise ValueError(f"--only {only}: not a row; the rows are {', '.join(ROWS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers {workers}: must be at least 1")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the tests import each other as `tests.…`
    collector = Collector(quick, only)
    args = ["--rootdir", str(ROOT), "-o", "addopts=", "-p", "no:terminal", "-p", "no:cacheprovider"]
    start = time.monotonic()
    code = pytest.main([str(tests), "-m", "fault", "--collect-only", *args], plugins=[collector])
    chosen = {n: r for n, r in collector.rows.items() if not only or n == only}
    if list_only:
        for name, row in chosen.items():
            print(f"{name}: {ROWS[name]}\n" + "".join(f"  {t}\n" for t in row.tests), end="")
        return 0 if code == 0 and all(r.tests for r in chosen.values()) else 1
    picked = sorted({t for r in chosen.values() for t in r.tests})
    if picked:
        pytest.main([*picked, *args, *_spread(picked, workers)], plugins=[collector])
    print(f"\n{table(chosen)}\n\nwall time {time.monotonic() - start:.0f} s ({'quick' if quick else 'full'})")
    for problem in dict.fromkeys(collector.problems + [f for r in chosen.values() for f in r.failures]):
        print(f"  {problem}", file=sys.stderr)
    return 0 if all(r.outcome() == "pass" for r in chosen.values()) else 1


def _spread(tests: list[str], workers: int | None) -> list[str]:
    """pytest-xdist's flags to run the tests on `workers` processes (by default one per CPU), a test file
    to each in turn, so that a file's shared fixtures (a reference run, a server) are made once. Most of a
    fault test is one single-threaded training process, or waiting on one, so two run well on two cores."""
    files = len({t.split("::")[0] for t in tests})
    n = min(workers or len(os.sched_getaffinity(0)), files)
    return ["-p", "no:xdist"] if n == 1 else ["-n", str(n), "--dist", "loadfile"]
