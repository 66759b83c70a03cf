"""Runs drawn from a known L(N, D) = E + A/N^alpha + B/D^beta, with lognormal noise on the loss."""

import numpy as np
import pandas as pd

# Besiroglu et al. 2024's refit of Chinchilla, rounded.
E, A, ALPHA, B, BETA = 1.8, 400.0, 0.34, 2000.0, 0.37
TRUE_A = BETA / (ALPHA + BETA)  # N_opt ~ C^a
# N_opt = G * C^a with G = (alpha A / (beta B))^(1/(alpha+beta)) * 6^-a (Hoffmann et al. eq. 4, C = 6ND).
TRUE_G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * 6.0**-TRUE_A


def law(n, d):
    return E + A / n**ALPHA + B / d**BETA


def n_opt(flops):
    return TRUE_G * flops**TRUE_A


def run_rows(n, d, noise: float, rng: np.random.Generator, arch: str = "transformer++", prefix: str = "r") -> list:
    loss = law(n, d) * np.exp(noise * rng.standard_normal(len(n)))
    return [
        {
            "run_id": f"{prefix}{i}",
            "name": f"{arch}-{prefix}{i}",
            "arch": arch,
            "n_params": n[i],
            "tokens": d[i],
            "lr": 1e-3,
            "flops": 6 * n[i] * d[i],
            "val_loss": loss[i],
            "status": "completed",
        }
        for i in range(len(n))
    ]


def grid_runs(sizes: int = 6, token_counts: int = 6, noise: float = 1e-3, seed: int = 0) -> pd.DataFrame:
    """N in 1e6..1e9 times D in 1e8..1e11; run_id r<i>-<j> for the i-th size and j-th token count."""
    rng = np.random.default_rng(seed)
    n, d = (
        a.ravel()
        for a in np.meshgrid(np.geomspace(1e6, 1e9, sizes), np.geomspace(1e8, 1e11, token_counts), indexing="ij")
    )
    rows = run_rows(n, d, noise, rng)
    for k, row in enumerate(rows):
        row["run_id"] = f"r{k // token_counts}-{k % token_counts}"
    return pd.DataFrame(rows)


def isoflop_runs(
    budgets=(1e17, 1e18, 1e19, 1e20, 1e21),
    sizes: int = 9,
    span: float = 1.0,
    noise: float = 1e-3,
    seed: int = 0,
    arch: str = "transformer++",
) -> pd.DataFrame:
    """An IsoFLOP design: per budget C, `sizes` model sizes spread over `span` decades either side of the
    true N_opt(C), each trained on D = C / 6N tokens."""
    rng = np.random.default_rng(seed)
    n = np.concatenate([n_opt(c) * np.logspace(-span, span, sizes) for c in budgets])
    c = np.repeat(budgets, sizes)
    return pd.DataFrame(run_rows(n, c / (6 * n), noise, rng, arch))
