"""tasks.doctor: `scaling doctor` runs the fault tests, row by row, and says which fired and passed."""

import re

from tasks.doctor import ROWS, Row, _spread, table
from tests.conftest import scaling


def listed(*flags: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in scaling("doctor", "--list", *flags, check=False).stdout.splitlines():
        if line.startswith("  "):
            rows[list(rows)[-1]].append(line.strip())
        else:
            rows[line.split(":")[0]] = []
    return rows


def test_every_row_has_its_tests_and_one_quick_case():
    full, quick = listed(), listed("--quick")
    assert list(full) == list(ROWS) == list(quick)
    assert all(full.values()), {r: t for r, t in full.items() if not t}
    assert {r: len(t) for r, t in quick.items()} == dict.fromkeys(ROWS, 1)
    assert all(set(quick[r]) <= set(full[r]) for r in ROWS)


def test_a_row_passes_only_when_every_test_fired_and_passed():
    def row(fired, outcomes):
        return Row(tests=[f"t{i}" for i in range(len(fired))], fired=fired, outcomes=outcomes, seconds=3.0)

    rows = {
        "kills": row([True, True], ["passed", "passed"]),
        "save_kill": row([True, False], ["passed", "passed"]),  # one test's fault never fired
        "corrupt_ckpt": row([True, True], ["passed", "failed"]),
        "non_finite": row([True], []),  # interrupted before its outcome
        "spike": row([False], ["skipped"]),
        "mlflow": Row(),
    }
    words = {name: (r.fired_word(), r.outcome()) for name, r in rows.items()}
    assert words == {
        "kills": ("yes", "pass"),  # the negative control: the others fail by what they lack, not by default
        "save_kill": ("no", "fail"),
        "corrupt_ckpt": ("yes", "fail"),
        "non_finite": ("yes", "fail"),
        "spike": ("no", "skipped"),
        "mlflow": ("no", "missing"),
    }
    assert re.search(r"SIGKILL the training process group at 3 seeded steps\s+yes\s+pass\s+3s", table(rows))


def test_doctor_runs_a_row_and_prints_its_line():
    done = scaling("doctor", "--only", "identity")
    assert re.search(r"corpora one byte apart; one corpus at two paths\s+yes\s+pass", done.stdout), done.stdout
    assert "passed" in done.stdout and "wall time" in done.stdout
    wrong = scaling("doctor", "--only", "nonsense", check=False)
    assert wrong.returncode == 2 and "not a row; the rows are kills, save_kill" in wrong.stderr


def test_the_tests_are_spread_over_workers_a_file_to_each():
    tests = ["tests/a.py::x", "tests/a.py::y[1]", "tests/b.py::z"]
    assert _spread(tests, 4) == ["-n", "2", "--dist", "loadfile"]  # no more workers than files
    assert _spread(tests[:2], 4) == ["-p", "no:xdist"]  # one file: no worker processes at all
    assert _spread(tests, 1) == ["-p", "no:xdist"]
    wrong = scaling("doctor", "--workers", "0", check=False)
    assert wrong.returncode == 2 and "--workers 0: must be at least 1" in wrong.stderr
