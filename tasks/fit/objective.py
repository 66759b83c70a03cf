"""The Chinchilla approach-3 objective and its gradient, for one parameter vector or a batch of them.

    L(N, D) = E + A / N^alpha + B / D^beta,   theta = (log A, log B, log E, alpha, beta)

    objective(theta) = sum_i w_i * Huber_delta( LSE(log A - alpha log N_i, log B - beta log D_i, log E) - log L_i )

(Hoffmann et al. 2022, app. D.2). Working in log loss weighs every run's relative error alike;
Huber with delta = 1e-3 keeps a few bad runs from steering the fit; the log-sum-exp form keeps
A, B and E positive and the prediction finite for any theta. Weights w are bootstrap counts
(all ones for the fit itself).
"""

from __future__ import annotations

import numpy as np

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, app. D.2
THETA_NAMES = ("A", "B", "E", "alpha", "beta")
DEAD_SHARE = 1e-6  # a term below this share of the loss at every point has died out (dead_terms)


def log_predict(theta, log_n, log_d) -> np.ndarray:
    """log L(N, D); theta (5,) or (5, ...) broadcast against log_n, log_d. NaN parameters (a bootstrap
    resample that gave no fit) give NaN."""
    a, b, e, alpha, beta = theta
    with np.errstate(invalid="ignore"):
        return np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)


def objective_batch(
    theta: np.ndarray, log_n, log_d, log_loss, weights: np.ndarray | None = None, delta: float = HUBER_DELTA
) -> tuple[np.ndarray, np.ndarray]:
    """Values (batch,) and gradients (batch, 5) for theta (batch, 5); weights (batch, points) or None."""
    a, b, e, alpha, beta = (col[:, None] for col in theta.T)
    t_a, t_b = a - alpha * log_n, b - beta * log_d  # (batch, points)
    top = np.maximum(np.maximum(t_a, t_b), e)  # log-sum-exp shift: no exp overflows whatever theta is
    w_a, w_b, w_e = np.exp(t_a - top), np.exp(t_b - top), np.exp(e - top)
    total = w_a + w_b + w_e
    resid = top + np.log(total) - log_loss
    slope = np.clip(resid, -delta, delta)  # Huber's derivative
    huber = slope * (resid - 0.5 * slope)  # r^2/2 inside delta, delta(|r| - delta/2) outside
    if weights is not None:
        huber, slope = huber * weights, slope * weights
    slope /= total  # times the softmax weights below: d log L / d term
    s_a, s_b, s_e = slope * w_a, slope * w_b, slope * w_e
    # einsum rather than @: as fast here, and no threaded BLAS call per evaluation to contend for the cores.
    d_alpha, d_beta = -np.einsum("ij,j->i", s_a, log_n), -np.einsum("ij,j->i", s_b, log_d)
    grad = np.stack([s_a.sum(1), s_b.sum(1), s_e.sum(1), d_alpha, d_beta], axis=1)
    return huber.sum(1), grad


def parametric_objective(
    theta, log_n, log_d, log_loss, delta: float = HUBER_DELTA, weights: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """The objective and its gradient at one theta (5,), as scipy.optimize.minimize(jac=True) wants them."""
    w = None if weights is None else weights[None, :]
    f, g = objective_batch(np.asarray(theta, float)[None, :], log_n, log_d, log_loss, w, delta)
    return float(f[0]), g[0]


def dead_terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> list[str]:
    """The parameters of each term of L(N, D) below DEAD_SHARE of the loss at every point: such a term has
    died out (its coefficient at the bound 0 in effect) wherever the optimizer left it, and the data do not
    identify its exponent."""
    a, b, e, alpha, beta = theta
    log_l = log_predict(theta, log_n, log_d)
    terms = {("A", "alpha"): a - alpha * log_n, ("B", "beta"): b - beta * log_d, ("E",): np.full_like(log_l, e)}
    return [name for names, t in terms.items() if np.all(t - log_l < np.log(DEAD_SHARE)) for name in names]
