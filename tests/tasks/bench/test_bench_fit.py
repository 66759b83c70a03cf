import pytest

import tasks.bench
from tests.tasks.bench.support import RATIO, table

PLAIN = "2. plain loop: scipy L-BFGS-B, finite differences"
BATCHED = "1. batched search (tasks.fit.parametric)"
EVERY_START = "3. scipy L-BFGS-B, analytic gradient, every start"


def test_fit_times_the_batched_search_against_the_plain_loop_and_loses_nothing(capsys):
    argv = ["fit", "--runs", "50", "--starts", "100", "--every", "25", "--resamples", "20"]
    assert tasks.bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = table(out, "L(N, D) from 100 starts")
    assert list(rows) == [PLAIN, BATCHED, EVERY_START]
    assert rows[PLAIN]["starts timed"] == "4" and rows[PLAIN]["speed-up vs plain"] == "1.00x"
    # Scaled by 100 starts / 4 timed; both cells are rounded to 0.01 s.
    assert float(rows[PLAIN]["s, 100 starts"]) == pytest.approx(float(rows[PLAIN]["s"]) * 25, abs=0.13)
    assert RATIO.fullmatch(rows[BATCHED]["speed-up vs plain"])
    # The batched search finds the optimum polishing every start finds.
    assert abs(float(rows[EVERY_START]["vs batched"])) < 1e-6
    boot = table(out, "4. the bootstrap")
    assert boot["4. bootstrap"]["resamples"] == "20" and boot["4. bootstrap"]["fitted"] == "20"
    assert boot["1. batched search"]["vs one search"] == "1.00x"
    lo, hi = map(float, boot["4. bootstrap"]["alpha"].strip("[]").split(", "))
    assert lo < 0.3478 < hi  # the truth the runs were drawn from
