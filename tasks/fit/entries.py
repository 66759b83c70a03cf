"""The layout of fits.json, written once: these TypedDicts are its shapes and their documentation,
the constants its key names. tasks.fit writes it, tasks.fit.scalars names MLflow metrics after it,
and reports read it: imports nothing but typing, so it is the one module of tasks reports import.

Per architecture, {arch: entry} under each key of PER_ARCH (the module of tasks.fit in brackets):
- loss_vs_compute (frontier): L = a * C^-b through the compute frontier (per budget the lowest loss);
- approach1 (frontier): Chinchilla approach 1, N_opt = G * C^a through the frontier runs' sizes;
- approach2 (isoflop): Chinchilla approach 2, IsoFLOP parabolas and their minima;
- parametric: Chinchilla approach 3, L(N, D) = E + A/N^alpha + B/D^beta, and the allocation it implies;
- learning_rate: the best lr per (N, D), and the law lr_opt = k * N^-p;
- held_out: the laws refitted without the largest compute scale, predicting it;
and across architectures compute_multiplier (frontier), the compute saved at equal loss. Strict
JSON: a number that is not finite is null.
"""

# No `from __future__ import annotations`: real types, read at run time (tasks.fit.scalars, the tests).
from typing import Literal, NotRequired, TypedDict

OK = "ok"
SKIPPED = "skipped"
DROPPED = "dropped"  # an IsoFLOP profile or an (N, D) learning-rate sweep left out of its fit
LOSS_VS_COMPUTE = "loss_vs_compute"
APPROACH1 = "approach1"
APPROACH2 = "approach2"
PARAMETRIC = "parametric"
LEARNING_RATE = "learning_rate"
HELD_OUT = "held_out"
PER_ARCH = (LOSS_VS_COMPUTE, APPROACH1, APPROACH2, PARAMETRIC, LEARNING_RATE, HELD_OUT)
COMPUTE_MULTIPLIER = "compute_multiplier"
LAW = "law"  # learning_rate's lr_opt = k * N^-p, inside its entry


class Interval(TypedDict):  # lo and hi: the 2.5% and 97.5% bootstrap percentiles, null without resamples
    value: float | None
    lo: float | None
    hi: float | None


class Skipped(TypedDict):  # a fit that could not be made: the reason in words, and no numbers
    status: Literal["skipped"]
    reason: str


class BootstrapInfo(TypedDict):
    resamples: int
    ok: int  # resamples that gave a fit; the others are left out of the intervals
    seed: int


class Allocation(TypedDict):  # N_opt = G * C^a, D_opt = C / (6 N_opt) proportional to C^b
    a: Interval
    b: Interval
    G: Interval


class AllocationPrediction(TypedDict):
    flops: float  # a budget of FitConfig.budgets
    n_opt: Interval
    d_opt: Interval
    tokens_per_param: Interval


class LossVsComputeParams(TypedDict):  # L = a * C^-b
    a: Interval
    b: Interval


class FrontierRun(TypedDict):
    run_id: str
    flops: float
    val_loss: float


class Band(TypedDict):  # the law's 95% band, out to one decade past the largest run
    flops: list[float]
    lo: list[float | None] | None
    hi: list[float | None] | None


class Offset(TypedDict):  # L = E + a * C^-b through the same runs (5 or more), for comparison
    E: float
    a: float
    b: float
    r2: float | None
    success: bool


class LossPrediction(TypedDict):
    flops: float
    loss: Interval
    perplexity: Interval


class LossVsCompute(TypedDict):
    status: Literal["ok"]
    form: str
    params: LossVsComputeParams
    r2: float | None
    n_runs: int
    points: list[FrontierRun]  # the compute frontier, by compute
    band: Band
    offset: Offset | None
    predictions: list[LossPrediction]
    bootstrap: BootstrapInfo


class Approach1Run(FrontierRun):
    n_params: float
    tokens: float


class AllocationFit(TypedDict):  # approaches 1 and 2: N_opt = G * C^a through their optima
    status: Literal["ok"]
    method: str
    form: str
    exponents: Allocation
    r2: float | None
    predictions: list[AllocationPrediction]
    bootstrap: BootstrapInfo


class Approach1(AllocationFit):
    points: list[Approach1Run]  # the compute frontier


class Profile(TypedDict):  # one compute budget: ok with its vertex, or dropped with the reason
    flops: float
    n_sizes: int
    run_ids: list[str]
    status: Literal["ok", "dropped"]
    reason: NotRequired[str]
    n_opt: NotRequired[Interval]
    loss_min: NotRequired[Interval]


class Approach2(AllocationFit):
    profiles: list[Profile]


class Approach2Skipped(Skipped):  # the profiles show why
    profiles: NotRequired[list[Profile]]


class ParametricParams(TypedDict):
    E: Interval
    A: Interval
    B: Interval
    alpha: Interval
    beta: Interval


class Convergence(TypedDict):
    state: Literal["converged", "stopped early", "on a bound"]
    converged: bool
    success: bool
    message: str
    iterations: int
    objective: float
    max_abs_grad: float
    on_bound: list[str]
    starts: int
    screened_to: int
    polished: int
    agreeing_starts: int


class ParametricPoint(TypedDict):  # an (N, D) at its best learning rate, seeds averaged
    run_ids: list[str]
    n_params: float
    tokens: float
    val_loss: float
    predicted: float


class ParametricPrediction(AllocationPrediction):
    loss: Interval


class Parametric(TypedDict):
    status: Literal["ok"]
    form: str
    params: ParametricParams
    exponents: Allocation
    allocation_form: str
    convergence: Convergence
    n_points: int
    points: list[ParametricPoint]
    residual_rms: float
    predictions: list[ParametricPrediction]
    bootstrap: BootstrapInfo


class LrPoint(TypedDict):  # one (N, D)'s learning rates: ok with the optimum, or dropped with the reason
    n_params: float
    tokens: float
    n_lrs: int
    lrs: list[float]
    status: Literal["ok", "dropped"]
    reason: NotRequired[str]
    lr_opt: NotRequired[Interval]
    loss_opt: NotRequired[Interval]


class LrLaw(TypedDict):
    status: Literal["ok"]
    form: str
    k: Interval
    p: Interval
    r2: float | None
    n_points: int


class LearningRate(TypedDict):
    status: Literal["ok"]
    form: str
    points: list[LrPoint]
    law: LrLaw | Skipped
    bootstrap: NotRequired[BootstrapInfo]  # with the law only


class LearningRateSkipped(Skipped):  # the points show why
    points: NotRequired[list[LrPoint]]


class HeldOutPrediction(TypedDict):  # the relative error is predicted / observed - 1
    observed: float
    predicted: Interval
    relative_error: Interval


class HeldOutPoint(HeldOutPrediction):
    n_params: float
    tokens: float
    run_ids: list[str]


class HeldOutParametric(TypedDict):
    status: Literal["ok"]
    convergence: str  # the refit's Convergence state
    points: list[HeldOutPoint]
    mean_abs_relative_error: Interval


class HeldOutLossVsCompute(HeldOutPrediction):  # of the held-out scale's lowest loss
    status: Literal["ok"]
    run_id: str
    flops: float


class HeldOut(TypedDict):
    status: Literal["ok"]
    flops: float  # the held-out scale's geometric mean compute
    run_ids: list[str]
    n_fit_runs: int
    parametric: HeldOutParametric | Skipped
    loss_vs_compute: HeldOutLossVsCompute | Skipped


class MultiplierAt(TypedDict):
    flops: float
    loss: float  # the reference's loss at flops
    multiplier: Interval  # C_reference / C_arch at that loss: above 1, arch needs less compute
    extrapolated: bool


class Multipliers(TypedDict):
    status: Literal["ok"]
    at: list[MultiplierAt]  # at the largest compute both ran, then at each budget


class ComputeMultipliers(TypedDict):
    reference: str
    form: str
    archs: dict[str, Multipliers | Skipped]


class Excluded(TypedDict):  # not completed, a loss that is not a positive number, or an outlier
    run_id: str
    name: str | None
    reason: str


class Fits(TypedDict):
    n_runs: int
    n_used: int
    excluded: list[Excluded]
    notes: list[str]
    budgets: list[float]
    options: dict  # tasks.config.FitConfig as JSON
    source: NotRequired[str]  # the runs table (fit_file only)
    loss_vs_compute: dict[str, LossVsCompute | Skipped]
    approach1: dict[str, Approach1 | Skipped]
    approach2: dict[str, Approach2 | Approach2Skipped]
    parametric: dict[str, Parametric | Skipped]
    learning_rate: dict[str, LearningRate | LearningRateSkipped]
    held_out: dict[str, HeldOut | Skipped]
    compute_multiplier: ComputeMultipliers | None  # null with one architecture
