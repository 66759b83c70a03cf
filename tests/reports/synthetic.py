"""A recorded sweep without training: runs and curves tables drawn from a known L(N, D), in the
collect stage's layout, so every fit and figure of the report has something to show.

Two architectures follow an IsoFLOP design (4 budgets x 5 sizes around the true optimum) with a
3-point learning-rate sweep at every (N, D); a third ('hyena') has two runs, so every one of its
fits is skipped. One run diverged and one failed.
"""

import numpy as np
import pandas as pd

E, A, ALPHA, B, BETA = 1.8, 400.0, 0.34, 2000.0, 0.37
BUDGETS = (1e15, 1e16, 1e17, 1e18)
LRS = (1e-3, 3e-3, 1e-2)
STEPS = 10


def n_opt(flops: float) -> float:
    # Hoffmann et al. eq. 4 with C = 6ND
    a = BETA / (ALPHA + BETA)
    return (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * (flops / 6) ** a


def synthetic_sweep(
    name: str = "demo", seed: int = 0, offset: float = 0.0, lrs: tuple[float, ...] = LRS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves); `offset` is added to every loss, to tell two sweeps apart; one learning rate
    instead of three makes a sweep of 42 runs instead of 122, quicker to draw."""
    rng = np.random.default_rng(seed)
    runs, curves = [], []
    for arch, gap in (("mamba", 0.0), ("transformer++", 0.08)):
        for c in BUDGETS:
            for k, factor in enumerate((0.25, 0.5, 1.0, 2.0, 4.0)):
                n = float(round(n_opt(c) * factor))
                d = float(round(c / (6 * n)))
                lr_opt = 3e-3 * (n / 1e6) ** -0.25
                for lr in lrs:
                    loss = E + gap + offset + A / n**ALPHA + B / d**BETA + 0.02 * np.log(lr / lr_opt) ** 2
                    loss *= np.exp(2e-3 * rng.standard_normal())
                    run_id = f"{arch}-{c:.0e}-{k}-{lr:.0e}"
                    status = {
                        f"mamba-1e+18-4-{lrs[-1]:.0e}": "diverged",
                        f"transformer++-1e+15-0-{lrs[0]:.0e}": "failed",
                    }.get(run_id, "completed")
                    runs.append(_run(name, run_id, arch, f"s{k}", n, d, lr, loss, status))
                    curves.append(_curve(name, run_id, arch, n, d, lr, loss, status))
    for k, n in enumerate((2e6, 8e6)):  # too few runs for any fit
        run_id = f"hyena-{k}"
        loss = E + 0.2 + A / n**ALPHA + B / (20 * n) ** BETA
        runs.append(_run(name, run_id, "hyena", f"s{k}", n, 20 * n, 3e-3, loss, "completed"))
        curves.append(_curve(name, run_id, "hyena", n, 20 * n, 3e-3, loss, "completed"))
    return pd.DataFrame(runs), pd.concat(curves, ignore_index=True)


def _run(sweep, run_id, arch, size, n, d, lr, loss, status) -> dict:
    done = status == "completed"
    return {
        "sweep": sweep,
        "run_id": run_id,
        "name": f"{arch}-{size}-{d:.3g}-lr{lr:.0e}",
        "arch": arch,
        "size": size,
        "n_layer": 2,
        "d_model": 64,
        "n_params": int(n),
        "n_params_nonembed": int(0.8 * n),
        "tokens": int(d),
        "lr": lr,
        "seed": 0,
        "steps": STEPS,
        "batch_tokens": int(d / STEPS),
        "seq_len": 128,
        "flops": 6 * n * d,
        "train_loss": loss if done else np.nan,
        "val_loss": loss if done else np.nan,
        "step": STEPS if done else 3,
        "wall_s": n * d / 1e13,
        "process_s": n * d / 1e13 + 5,
        "status": status,
        "message": "" if status != "failed" else "training process exited with code 1",
    }


def _curve(sweep, run_id, arch, n, d, lr, loss, status) -> pd.DataFrame:
    steps = np.arange(1, STEPS + 1) if status != "failed" else np.arange(1, 4)
    seen = steps * d / STEPS
    values = loss + 3.0 * (seen / d) ** -0.5 * np.exp(-steps / 3)
    if status == "diverged":
        values[6:] = np.inf
    return pd.DataFrame(
        {
            "sweep": sweep,
            "run_id": run_id,
            "arch": arch,
            "n_params": int(n),
            "n_params_nonembed": int(0.8 * n),
            "tokens": int(d),
            "lr": lr,
            "step": steps,
            "tokens_seen": seen.astype(int),
            "flops": 6 * n * seen,
            "train_loss": values,
            "val_loss": np.where(steps % 5 == 0, values, np.nan),
            "lr_now": lr,
            "grad_norm": 1.0,
            "tokens_per_s": 1e5,
            "wall_s": steps * 0.1,
            "timestamp_ms": 1_700_000_000_000 + steps * 1000,
        }
    )
