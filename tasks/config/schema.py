"""The sweep's typed fields: `SweepConfig` and its sections, each checked where it is declared."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.ladders import ARCH_NAMES, LADDERS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class DataConfig(_Strict):
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

    @model_validator(mode="before")
    @classmethod
    def _hg38_tokenizer_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("source") == "hg38" and "tokenizer" not in data:
            return {**data, "tokenizer": "char"}
        return data

    @model_validator(mode="after")
    def _fits_source(self):
        if self.source == "hg38" and self.tokenizer != "char":
            raise ValueError(
                f"data.tokenizer {self.tokenizer!r}: hg38 is read as single-nucleotide characters (A, C, G, T, N); "
                "leave data.tokenizer unset or set it to 'char'"
            )
        if self.source != "hg38":
            if self.tokenizer == "char":
                raise ValueError("data.tokenizer 'char' is the tokenizer of data.source hg38 only")
            if self.fasta or self.bed:
                raise ValueError("data.fasta and data.bed belong to data.source hg38")
        return self


class SizeConfig(_Strict):
    name: str
    n_layer: PositiveInt
    d_model: PositiveInt
    n_head: PositiveInt
    lr: PositiveFloat | None = None
    """The size's reference (GPT-3 recipe) peak learning rate, used by `lr.scale`."""

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        return self


class TokensConfig(_Strict):
    per_param: PositiveFloat | None = 20.0
    """Chinchilla tokens per parameter; the budget of a size is per_param x n_params x multiplier."""
    multipliers: list[PositiveFloat] = [1.0]
    counts: list[PositiveInt] | None = None
    """Explicit token budgets instead of per_param x multipliers."""


class LRConfig(_Strict):
    values: list[PositiveFloat] | None = None
    """Peak learning rates, the same for every size."""
    scale: list[PositiveFloat] | None = None
    """Multiples of each size's reference LR (5 = the Mamba paper's improved recipe)."""

    @model_validator(mode="after")
    def _one_of(self):
        if (self.values is None) == (self.scale is None):
            raise ValueError("give exactly one of lr.values (e.g. [1e-3, 3e-3]) or lr.scale (e.g. [1, 5])")
        return self


class OptimizerConfig(_Strict):
    betas: tuple[float, float] = (0.9, 0.95)
    eps: PositiveFloat = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    grad_clip: PositiveFloat = 1.0

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0 <= b < 1 for b in v):
            raise ValueError("betas must lie in [0, 1), e.g. [0.9, 0.95]")
        return v


class ScheduleConfig(_Strict):
    kind: Literal["cosine", "wsd"] = "cosine"
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    min_lr: Annotated[float, Field(ge=0)] = 1e-5
    decay_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2
    """wsd only: the share of steps in the final decay."""


class ResourcesConfig(_Strict):
    ranks_per_run: PositiveInt = 1
    """Data-parallel ranks (GPUs, or CPU processes) for one run."""
    concurrency: PositiveInt = 1
    """Runs trained at once."""
    threads_per_rank: PositiveInt | None = None
    """CPU threads per rank (default: cores / (concurrency x ranks_per_run))."""
    flops_per_s: PositiveFloat | None = None
    """Achieved training FLOP/s per rank for time estimates (default: a short matmul probe on the CPU,
    or 40% of the GPU's bf16 peak)."""
    startup_s: Annotated[float, Field(ge=0)] = 8.0
    """Per-run launch cost added to time estimates (process start, imports, DeepSpeed init: ~8 s on a CPU)."""
    timeout_s: PositiveFloat | None = None
    """Wall-clock limit of one run's training process; past it the run is stopped and marked failed."""
    retries: Annotated[int, Field(ge=0)] = 2
    """Times a failed run (a crash, a kill, timeout_s) is tried again in the same invocation, resuming from its
    last checkpoint; a diverged run never is."""
    retry_delay_s: Annotated[float, Field(ge=0)] = 10.0


class TrainConfig(_Strict):
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


class OutlierConfig(_Strict):
    drop_highest: Annotated[int, Field(ge=0)] = 0
    """Per architecture, leave out the k completed runs with the highest val_loss (listed in fits.json)."""


class FitConfig(_Strict):
    budgets: list[PositiveFloat] = Field(default=[1e18, 1e19, 1e20, 1e21], min_length=1)
    """Compute budgets (FLOPs) at which the fits predict N_opt, D_opt, tokens per parameter and loss."""
    starts: PositiveInt | Literal["full"] = "full"
    """L-BFGS starting points for L(N, D): 'full' (= 4500) is Chinchilla's grid; fewer are drawn from it."""
    bootstrap: Annotated[int, Field(ge=0)] = 200
    """Bootstrap resamples behind every 95% interval; 0 for no intervals."""
    seed: int = 0
    """Seed of the bootstrap's draws: the same table, options and seed give the same fits.json."""
    outliers: OutlierConfig = OutlierConfig()
    held_out: bool = True
    """Refit without the largest compute scale and report how well the laws predict it."""
    reference_arch: str | None = None
    """Architecture the compute multipliers are against (default: transformer++ if present, else the first)."""

    @field_validator("starts")
    @classmethod
    def _within_grid(cls, v):
        if isinstance(v, int) and v > 4500:
            raise ValueError("Chinchilla's start grid has 4500 points; give at most 4500, or 'full'")
        return v

    @field_validator("bootstrap")
    @classmethod
    def _enough_resamples(cls, v):
        if 0 < v < 20:
            raise ValueError("a 95% interval needs at least 20 resamples (200 or more is usual); 0 turns intervals off")
        return v


class SweepConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    data: DataConfig = DataConfig()
    architectures: list[str] = Field(min_length=1)
    ladder: str | list[SizeConfig] = "tiny"
    sizes: list[str] | None = None
    """Names of ladder sizes to train (default: all)."""
    tokens: TokensConfig = TokensConfig()
    lr: LRConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    seeds: list[int] = [0]
    resources: ResourcesConfig = ResourcesConfig()
    fit: FitConfig = FitConfig()

    @field_validator("architectures")
    @classmethod
    def _known_arch(cls, v):
        for a in v:
            if a not in ARCH_NAMES:
                raise ValueError(f"unknown architecture {a!r}; valid: {', '.join(sorted(ARCH_NAMES))}")
        return v

    @field_validator("ladder")
    @classmethod
    def _known_ladder(cls, v):
        if isinstance(v, str) and v not in LADDERS:
            raise ValueError(f"unknown ladder {v!r}; valid: {', '.join(sorted(LADDERS))} or a list of sizes")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        names = [s.name for s in self.size_ladder()]
        for s in self.sizes or []:
            if s not in names:
                raise ValueError(f"sizes: {s!r} is not in the ladder; valid: {', '.join(names)}")
        if self.lr.scale is not None:
            for s in self.size_ladder():
                if s.lr is None:
                    raise ValueError(f"lr.scale needs a reference lr on every size; size {s.name!r} has none")
        ref = self.fit.reference_arch
        if ref is not None and ref not in self.architectures:
            archs = ", ".join(self.architectures)
            raise ValueError(f"fit.reference_arch {ref!r} is not one of the sweep's architectures ({archs})")
        if self.tokens.counts is None and self.tokens.per_param is None:
            raise ValueError("tokens: give per_param (with multipliers) or counts")
        seqs = self.train.batch_tokens / self.data.seq_len
        if seqs != int(seqs) or int(seqs) % self.resources.ranks_per_run:
            raise ValueError(
                f"train.batch_tokens {self.train.batch_tokens} must be a multiple of data.seq_len x "
                f"resources.ranks_per_run = {self.data.seq_len * self.resources.ranks_per_run}"
            )
        per_rank = int(seqs) // self.resources.ranks_per_run
        mb = self.train.micro_batch_size
        if mb is not None and per_rank % mb:
            raise ValueError(f"train.micro_batch_size {mb} must divide the per-rank batch of {per_rank} sequences")
        return self

    def size_ladder(self) -> list[SizeConfig]:
        if isinstance(self.ladder, str):
            return [SizeConfig(**s) for s in LADDERS[self.ladder]]
        return list(self.ladder)
