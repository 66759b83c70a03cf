"""What the report calls each fit, in its summary, tables and figures alike: one name per concept.
"Frontier" is kept for the compute frontier itself (the runs with the lowest loss per budget), never
for a law fitted through it."""

from __future__ import annotations

from tasks.fit.entries import APPROACH1, APPROACH2, PARAMETRIC

LOSS_VS_COMPUTE_NAME = "loss vs compute"  # L = a * C^-b
PARAMETRIC_NAME = "L(N, D)"
# The three Chinchilla estimates of N_opt = G * C^a, by their fits.json keys.
APPROACH_NAMES = {
    APPROACH1: "approach 1",
    APPROACH2: "approach 2 (IsoFLOP)",
    PARAMETRIC: f"approach 3 ({PARAMETRIC_NAME})",
}
