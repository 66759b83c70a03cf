import os

import pytest

from reports.combine import SweepResults
from reports.pdf import find_chromium
from reports.render import render_report
from tasks.config import FitConfig
from tasks.fit import fit_runs
from tests.reports.synthetic import synthetic_sweep

FIT = FitConfig(budgets=[1e19, 1e20], starts=16, bootstrap=50)
CONFIG = "name: demo\narchitectures: [mamba, transformer++, hyena]\n"


@pytest.fixture(scope="session")
def demo():
    """The synthetic sweep, fitted: SweepResults named 'demo'."""
    runs, curves = synthetic_sweep()
    return SweepResults("demo", runs, curves, fit_runs(runs, FIT), CONFIG)


@pytest.fixture(scope="session")
def demo_report(demo, tmp_path_factory):
    """The demo sweep's report, PDF included when Chromium is there."""
    return render_report([demo], tmp_path_factory.mktemp("report"), "Demo sweep")


@pytest.fixture(scope="session")
def chromium():
    """The Chromium binary, else a skip (or, with SCALING_REQUIRE_CHROMIUM=1 as CI sets, a failure)."""
    path = find_chromium()
    if path is None:
        why = "Chromium not found (apt-get install -y chromium, or make browser)"
        if os.environ.get("SCALING_REQUIRE_CHROMIUM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return path
