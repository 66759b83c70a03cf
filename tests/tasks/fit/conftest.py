import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def one_blas_thread():
    """As tasks.fit.fit_runs does: scipy's L-BFGS-B calls BLAS on tiny arrays thousands of times, and a
    threaded BLAS then only contends for the cores (a polish took 1 s instead of 20 ms on a busy machine)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield
