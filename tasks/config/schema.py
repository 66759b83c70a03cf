"""The sweep's typed fields: `SweepConfig` and its sections, each field checked where it is declared.

The rules across fields are tasks.config.rules. Each model applies its own, so a config constructed
directly is valid or rejected; `partial_fields` gives those rules the valid fields of an invalid sweep,
so that `load_sweep` lists every problem at once.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from models.ladders import ARCH_NAMES, LADDERS
from tasks.config.base import PositiveFloat, PositiveInt, Strict
from tasks.config.cluster import ClusterConfig, Executor
from tasks.config.rules import DATA_RULES, LR_RULES, SIZE_RULES, SWEEP_RULES, apply_rules, reject


class DataConfig(Strict):
    source: Literal["sample", "pile", "text", "hg38"] = "sample"
    path: str | None = None
    """Corpus directory. pile: the shards (00.jsonl.zst.., val.jsonl.zst); text: any folder of
    .txt/.jsonl/.jsonl.zst; sample: where the corpus is built (default: <output>/data/sample-corpus);
    hg38: the folder holding the FASTA and the BED (see fasta, bed)."""
    fasta: str | None = None
    """hg38 only: the genome FASTA, inside data.path unless absolute (default: hg38.ml.fa, HyenaDNA's name)."""
    bed: str | None = None
    """hg38 only: the BED of intervals `chrom start end split` (split train/valid/test), inside data.path unless
    absolute (default: human-sequences.bed, HyenaDNA's name, else sequences_human.bed, Basenji's)."""
    tokenizer: str = "bpe:512"
    """'bytes', 'bpe:<vocab>' (trained on the corpus), or the path of a HF tokenizer.json; hg38: 'char' (single
    nucleotides, its only tokenizer and its default)."""
    seq_len: PositiveInt = 128
    val_tokens: PositiveInt = 65_536
    """Validation tokens held out (when the source has no val split) and evaluated at each eval."""
    sample_bytes: PositiveInt = 12_000_000
    """sample only: how much of the Python standard library's source to put in the corpus."""
    subsets: list[str] | None = None
    """Keep only documents whose `meta.pile_set_name` is listed (e.g. [Pile-CC, Github]); default all."""
    mixture: dict[str, Annotated[float, Field(ge=0)]] | None = None
    """Training weight per set name, in epochs as the Pile paper gives them (2.0: every document twice,
    0.5: a seeded half of them); sets not named keep weight 1. Validation is never reweighted."""
    on_bad_record: Literal["error", "skip"] = "error"
    """A bad record (not JSON, no text, invalid UTF-8, a corrupt or empty file): stop with an error naming
    the file and line, or skip it and count it by cause in the token cache's manifest. hg38: a BED interval
    outside its contig or on a contig the FASTA lacks (BED syntax errors always stop)."""
    workers: PositiveInt | None = None
    """Tokenizing processes (default: the machine's cores, or one for a corpus under 32 MiB)."""

    @classmethod
    def derived_defaults(cls, data: dict) -> dict:
        if data.get("source") == "hg38" and "tokenizer" not in data:
            return {**data, "tokenizer": "char"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _hg38_tokenizer_default(cls, data: Any) -> Any:
        return cls.derived_defaults(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _cross_field(self):
        reject(apply_rules(DATA_RULES, self.model_dump(), ("data",)))
        return self


class SizeConfig(Strict):
    name: str
    n_layer: PositiveInt
    d_model: PositiveInt
    n_head: PositiveInt
    lr: PositiveFloat | None = None
    """The size's reference (GPT-3 recipe) peak learning rate, used by `lr.scale`."""

    @model_validator(mode="after")
    def _cross_field(self):
        reject(apply_rules(SIZE_RULES, self.model_dump()))
        return self


class TokensConfig(Strict):
    per_param: PositiveFloat | None = 20.0
    """Chinchilla tokens per parameter; the budget of a size is per_param x n_params x multiplier."""
    multipliers: list[PositiveFloat] = [1.0]
    counts: list[PositiveInt] | None = None
    """Explicit token budgets instead of per_param x multipliers."""


class LRConfig(Strict):
    values: list[PositiveFloat] | None = None
    """Peak learning rates, the same for every size."""
    scale: list[PositiveFloat] | None = None
    """Multiples of each size's reference LR (5 = the Mamba paper's improved recipe)."""

    @model_validator(mode="after")
    def _cross_field(self):
        reject(apply_rules(LR_RULES, self.model_dump(), ("lr",)))
        return self


# Checks of one field are Annotated validators, not decorated ones: `partial_fields` validates a field on its
# own, from its annotation, and a decorated validator would not come with it.


def _betas_in_range(v: tuple[float, float]) -> tuple[float, float]:
    if not all(0 <= b < 1 for b in v):
        raise ValueError("betas must lie in [0, 1), e.g. [0.9, 0.95]")
    return v


class OptimizerConfig(Strict):
    betas: Annotated[tuple[float, float], AfterValidator(_betas_in_range)] = (0.9, 0.95)
    eps: PositiveFloat = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    grad_clip: PositiveFloat = 1.0


class ScheduleConfig(Strict):
    kind: Literal["cosine", "wsd"] = "cosine"
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    min_lr: Annotated[float, Field(ge=0)] = 1e-5
    decay_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2
    """wsd only: the share of steps in the final decay."""


class ResourcesConfig(Strict):
    executor: Executor = "local"
    """Where runs train: on this machine, or one Slurm job, Ray task or Kubernetes pod each (the `cluster`
    section holds the engine's settings)."""
    ranks_per_run: PositiveInt = 1
    """Data-parallel ranks for one run: on a GPU node, one GPU each; on a CPU, processes."""
    nodes_per_run: PositiveInt = 1
    """Nodes one run spans, each with ranks_per_run ranks, joined by torchrun's c10d rendezvous
    (`python -m tasks.train.node` on each). Above 1 only with executor slurm, which starts them."""
    gpus: list[Annotated[int, Field(ge=0)]] | None = None
    """The node's GPUs its runs may use, as indexes into the GPUs its worker sees (default: all)."""
    concurrency: PositiveInt | None = None
    """Runs trained at once (default: on a GPU node, its GPUs / ranks_per_run; on a CPU, 1)."""
    threads_per_rank: PositiveInt | None = None
    """CPU threads per rank (default: cores / (concurrency x ranks_per_run))."""
    flops_per_s: PositiveFloat | None = None
    """Achieved training FLOP/s per rank for time estimates (default: a short matmul probe on the CPU,
    or 40% of the GPU's bf16 peak)."""
    mfu: Annotated[float, Field(gt=0, le=1)] = 0.4
    """The share of a GPU's dense bf16 peak a run is taken to reach, for the plan's GPU-hours."""
    startup_s: Annotated[float, Field(ge=0)] = 8.0
    """Per-run launch cost added to time estimates (process start, imports, DeepSpeed init: ~8 s on a CPU)."""
    timeout_s: PositiveFloat | None = None
    """Wall-clock limit of one run's training process; past it the run is stopped and marked failed."""
    retries: Annotated[int, Field(ge=0)] = 2
    """Times a failed run (a crash, a kill, timeout_s) is tried again in the same invocation, resuming from its
    last checkpoint; a diverged run never is."""
    retry_delay_s: Annotated[float, Field(ge=0)] = 10.0


class TrainConfig(Strict):
    batch_tokens: PositiveInt = 4096
    """Tokens per optimizer step, over all ranks (the paper: 2^19)."""
    micro_batch_size: PositiveInt | None = None
    """Sequences per rank per forward pass (default: the whole per-rank batch)."""
    precision: Literal["bf16", "fp32"] = "bf16"
    zero_stage: Literal[0, 1, 2, 3] = 1
    eval_interval: PositiveInt = 50
    """Steps between validation evaluations (one also runs at the end)."""
    checkpoint_interval: PositiveInt = 100
    log_interval: PositiveInt = 5


class OutlierConfig(Strict):
    drop_highest: Annotated[int, Field(ge=0)] = 0
    """Per architecture, leave out the k completed runs with the highest val_loss (listed in fits.json)."""


def _within_grid(v: int | str) -> int | str:
    if isinstance(v, int) and v > 4500:
        raise ValueError("Chinchilla's start grid has 4500 points; give at most 4500, or 'full'")
    return v


def _enough_resamples(v: int) -> int:
    if 0 < v < 20:
        raise ValueError("a 95% interval needs at least 20 resamples (200 or more is usual); 0 turns intervals off")
    return v


class FitConfig(Strict):
    budgets: list[PositiveFloat] = Field(default=[1e18, 1e19, 1e20, 1e21], min_length=1)
    """Compute budgets (FLOPs) at which the fits predict N_opt, D_opt, tokens per parameter and loss."""
    starts: Annotated[PositiveInt | Literal["full"], AfterValidator(_within_grid)] = "full"
    """L-BFGS starting points for L(N, D): 'full' (= 4500) is Chinchilla's grid; fewer are drawn from it."""
    bootstrap: Annotated[int, Field(ge=0), AfterValidator(_enough_resamples)] = 200
    """Bootstrap resamples behind every 95% interval; 0 for no intervals."""
    seed: int = 0
    """Seed of the bootstrap's draws: the same table, options and seed give the same fits.json."""
    outliers: OutlierConfig = OutlierConfig()
    held_out: bool = True
    """Refit without the largest compute scale and report how well the laws predict it."""
    reference_arch: str | None = None
    """Architecture the compute multipliers are against (default: transformer++ if present, else the first)."""


def _known_arch(a: str) -> str:
    if a not in ARCH_NAMES:
        raise ValueError(f"unknown architecture {a!r}; valid: {', '.join(sorted(ARCH_NAMES))}")
    return a


def _known_ladder(v: str) -> str:
    if v not in LADDERS:
        raise ValueError(f"unknown ladder {v!r}; valid: {', '.join(sorted(LADDERS))} or a list of sizes")
    return v


def _ladder_kind(v: Any) -> str | None:
    if isinstance(v, str):
        return "name"
    return "sizes" if isinstance(v, list) else None


# Tagged, so a bad list of sizes reports only the list's errors, not also "should be a valid string".
Ladder = Annotated[
    Annotated[str, AfterValidator(_known_ladder), Tag("name")] | Annotated[list[SizeConfig], Tag("sizes")],
    Discriminator(
        _ladder_kind,
        custom_error_type="ladder",
        custom_error_message=f"give a ladder's name ({', '.join(sorted(LADDERS))}) or a list of sizes",
    ),
]


def _a_store(v: str | None) -> str | None:
    if v is not None and "://" not in v:
        raise ValueError(
            "must be an MLflow tracking URI, e.g. http://mlflow.internal:5000, "
            "postgresql+psycopg://user@host/mlflow or sqlite:////shared/mlflow.db"
        )
    if v is not None and re.match(r"^[^:/]+://[^/@]*:[^/@]*@", v):
        raise ValueError(
            "holds a password, which would be copied into the sweep's records and report; "
            "give it through MLFLOW_TRACKING_PASSWORD (a server) or ~/.pgpass (PostgreSQL)"
        )
    return v


class TrackingConfig(Strict):
    uri: Annotated[str | None, AfterValidator(_a_store)] = None
    """The MLflow tracking store (default: MLFLOW_TRACKING_URI, else a SQLite file in the output folder)."""


class SweepConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    data: DataConfig = DataConfig()
    architectures: list[Annotated[str, AfterValidator(_known_arch)]] = Field(min_length=1)
    ladder: Ladder = "tiny"
    sizes: list[str] | None = None
    """Names of ladder sizes to train (default: all)."""
    tokens: TokensConfig = TokensConfig()
    lr: LRConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    seeds: list[int] = [0]
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    cluster: ClusterConfig = ClusterConfig()
    """The executor's settings, inline or the path of a site's profile file (deployments/clusters/)."""
    fit: FitConfig = FitConfig()

    @model_validator(mode="after")
    def _cross_field(self):
        reject(apply_rules(SWEEP_RULES, self.model_dump()))  # the sections' own rules have run in their models
        return self

    def size_ladder(self) -> list[SizeConfig]:
        if isinstance(self.ladder, str):
            return [SizeConfig(**s) for s in LADDERS[self.ladder]]
        return list(self.ladder)
