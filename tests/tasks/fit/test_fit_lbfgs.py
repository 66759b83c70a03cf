"""tasks.fit.lbfgs: the batched, box-constrained L-BFGS agrees with scipy's L-BFGS-B."""

import numpy as np
from scipy.optimize import minimize, rosen, rosen_der

from tasks.fit.lbfgs import minimise_batch, projected_gradient


def rosenbrock(x, rows):
    """The Rosenbrock function and its gradient, a row of x at a time."""
    head, tail = x[:, :-1], x[:, 1:]
    f = (100 * (tail - head**2) ** 2 + (1 - head) ** 2).sum(1)
    g = np.zeros_like(x)
    g[:, :-1] = -400 * head * (tail - head**2) - 2 * (1 - head)
    g[:, 1:] += 200 * (tail - head**2)
    return f, g


def test_unconstrained_rosenbrock_from_many_starts():
    starts = np.random.default_rng(0).uniform(-2, 2, (6, 4))
    np.testing.assert_allclose(rosenbrock(starts, None)[1], [rosen_der(x) for x in starts])
    out = minimise_batch(rosenbrock, starts, np.full(4, -10.0), np.full(4, 10.0), max_iter=2000, gtol=1e-9)
    assert out.converged.all()
    # The 4-d Rosenbrock function has a second local minimum near (-1, 1, 1, 1); each start must find
    # the one scipy finds from it.
    for x0, x in zip(starts, out.x):
        ref = minimize(rosen, x0, jac=rosen_der, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-15})
        np.testing.assert_allclose(x, ref.x, atol=1e-5)


def test_bounds_hold_and_the_constrained_optimum_is_found():
    # min (x - 3)^2 + (y + 2)^2 over [0, 1] x [-1, 5]: the corner (1, -1).
    def quad(x, rows):
        return ((x - [3.0, -2.0]) ** 2).sum(1), 2 * (x - [3.0, -2.0])

    starts = np.array([[0.5, 0.0], [0.0, 5.0], [1.0, -1.0], [7.0, 9.0]])  # the last starts outside: clipped
    out = minimise_batch(quad, starts, [0.0, -1.0], [1.0, 5.0], max_iter=100)
    np.testing.assert_allclose(out.x, [[1.0, -1.0]] * 4, atol=1e-12)
    assert out.converged.all()
    assert (projected_gradient(out.x, out.g, [0.0, -1.0], [1.0, 5.0]) == 0).all()
