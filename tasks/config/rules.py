"""The rules across a sweep's fields (a batch that divides into ranks, sizes in the ladder), as plain functions.

Each reads validated values (a section's or the sweep's, as dicts) and returns its problems, so that
`load_sweep` can run every one of them even when other fields are invalid (tasks.config.schema's
`partial_fields`) and list all problems at once. The models of tasks.config.schema apply them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from pydantic_core import PydanticCustomError

from models.ladders import LADDERS

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]
"""A field's path (`("train", "micro_batch_size")`, `("sizes", 1)`) and what is wrong with it."""


def field_path(loc: Loc) -> str:
    """`train.micro_batch_size`, `ladder[0].n_head`: the path as the sweep file writes it."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"


def problem_line(loc: Loc, msg: str) -> str:
    path = field_path(loc)
    # A message may open with its field as the subject ("fit.reference_arch 'rwkv' is not ..."): don't repeat it.
    return msg if msg.startswith(path + " ") else f"{path}: {msg}"


def reject(problems: list[Problem]) -> None:
    """Raise every problem as one error of type cross_field, which load_sweep knows it re-derives itself."""
    if problems:
        text = "; ".join(problem_line(loc, msg) for loc, msg in problems)
        raise PydanticCustomError("cross_field", "{problems}", {"problems": text})


def _some(numbers: list[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (", ..." if len(numbers) > limit else "")


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


# The cross-field rules. Each reads validated values (a section's or the sweep's, as dicts) and returns its
# problems; `partial_fields` leaves an invalid field out, so a rule that reads one raises KeyError and is
# skipped: that field has its own error, and the rule could only guess.

Rule = Callable[[dict], Iterable[Problem]]


def _tokenizer_fits_source(d: dict) -> list[Problem]:
    tok, hg38 = d["tokenizer"], d["source"] == "hg38"
    if hg38 and tok != "char":
        why = "hg38 is read as single-nucleotide characters (A, C, G, T, N); leave data.tokenizer unset or 'char'"
        return [(("tokenizer",), f"{tok!r} does not fit: {why}")]
    if not hg38 and tok == "char":
        why = "is the tokenizer of data.source hg38 only; use 'bytes', 'bpe:<vocab>' or a tokenizer.json"
        return [(("tokenizer",), f"'char' {why}")]
    return []


def _hg38_files(d: dict) -> list[Problem]:
    if d["source"] == "hg38":
        return []
    return [
        ((k,), f"belongs to data.source hg38, not {d['source']!r}; remove it") for k in ("fasta", "bed") if d.get(k)
    ]


def _heads_divide(s: dict) -> list[Problem]:
    d_model, n_head = s["d_model"], s["n_head"]
    if d_model % n_head == 0:
        return []
    return [(("n_head",), f"d_model {d_model} is not divisible by n_head {n_head}; valid: {_some(_divisors(d_model))}")]


def _one_lr(lr: dict) -> list[Problem]:
    if (lr["values"] is None) != (lr["scale"] is None):
        return []
    return [((), "give exactly one of lr.values (e.g. [1e-3, 3e-3]) or lr.scale (e.g. [1, 5])")]


def _ladder_sizes(v: dict) -> list[dict]:
    return LADDERS[v["ladder"]] if isinstance(v["ladder"], str) else v["ladder"]


def _sizes_in_ladder(v: dict) -> list[Problem]:
    names = [s["name"] for s in _ladder_sizes(v)]
    ladder = f"ladder {v['ladder']!r}" if isinstance(v["ladder"], str) else "ladder"
    return [
        (("sizes", i), f"{s!r} is not in the {ladder}; valid: {', '.join(names)}")
        for i, s in enumerate(v["sizes"] or [])
        if s not in names
    ]


def _scale_has_reference(v: dict) -> list[Problem]:
    if v["lr"]["scale"] is None:
        return []
    why = "lr.scale needs a reference lr on every size; give this size an lr, or use lr.values"
    return [(("ladder", i, "lr"), why) for i, s in enumerate(_ladder_sizes(v)) if s["lr"] is None]


def _reference_arch(v: dict) -> list[Problem]:
    ref = v["fit"]["reference_arch"]
    if ref is None or ref in v["architectures"]:
        return []
    archs = ", ".join(v["architectures"])
    return [
        (("fit", "reference_arch"), f"fit.reference_arch {ref!r} is not one of the sweep's architectures ({archs})")
    ]


def _token_budget(v: dict) -> list[Problem]:
    t = v["tokens"]
    if t["counts"] is None and t["per_param"] is None:
        return [(("tokens",), "give per_param (with multipliers) or counts")]
    return []


def _rank_batch(v: dict) -> tuple[int, int]:
    """data.seq_len x every rank of a run (one sequence each), and train.batch_tokens, its multiple."""
    r = v["resources"]
    return v["data"]["seq_len"] * r["ranks_per_run"] * r["nodes_per_run"], v["train"]["batch_tokens"]


def _batch_tokens(v: dict) -> list[Problem]:
    unit, tokens = _rank_batch(v)
    if tokens % unit == 0:
        return []
    near = [m for m in (tokens // unit * unit, (tokens // unit + 1) * unit) if m > 0]
    ranks = "resources.ranks_per_run" + (" x resources.nodes_per_run" if v["resources"]["nodes_per_run"] > 1 else "")
    why = f"must be a multiple of data.seq_len x {ranks} = {unit}, e.g. {' or '.join(map(str, near))}"
    return [(("train", "batch_tokens"), f"{tokens} {why}")]


def _micro_batch(v: dict) -> list[Problem]:
    unit, tokens = _rank_batch(v)
    mb = v["train"]["micro_batch_size"]
    if tokens % unit or mb is None or (tokens // unit) % mb == 0:  # no per-rank batch to divide: _batch_tokens says
        return []
    per_rank = tokens // unit
    why = f"must divide the per-rank batch of {per_rank} sequences; valid: {_some(_divisors(per_rank))}"
    return [(("train", "micro_batch_size"), f"{mb} {why}")]


def _nodes_need_slurm(v: dict) -> list[Problem]:
    r = v["resources"]
    if r["nodes_per_run"] == 1 or r["executor"] == "slurm":
        return []
    where = {
        "local": "this machine is one node",
        "ray": "a Ray task runs on one node",
        "kubernetes": "a run is one pod",
    }[r["executor"]]
    why = f"{where}; set resources.executor: slurm to span nodes, or give 1"
    return [(("resources", "nodes_per_run"), f"{r['nodes_per_run']} with executor {r['executor']}: {why}")]


DATA_RULES: tuple[Rule, ...] = (_tokenizer_fits_source, _hg38_files)
SIZE_RULES: tuple[Rule, ...] = (_heads_divide,)
LR_RULES: tuple[Rule, ...] = (_one_lr,)
SWEEP_RULES: tuple[Rule, ...] = (
    _sizes_in_ladder,
    _scale_has_reference,
    _reference_arch,
    _token_budget,
    _batch_tokens,
    _micro_batch,
    _nodes_need_slurm,
)


def apply_rules(rules: Iterable[Rule], values: dict, prefix: Loc = ()) -> list[Problem]:
    problems = []
    for rule in rules:
        try:
            problems += [(prefix + loc, msg) for loc, msg in rule(values)]
        except KeyError:  # it reads a field that is invalid, so left out: that field's own error is reported
            continue
    return problems


def cross_field_problems(values: dict) -> list[Problem]:
    """Every cross-field rule of a sweep over its valid fields (`partial_fields`), sections' rules included."""
    problems = apply_rules(DATA_RULES, values.get("data", {}), ("data",)) + apply_rules(
        LR_RULES, values.get("lr", {}), ("lr",)
    )
    if isinstance(values.get("ladder"), list):
        for i, size in enumerate(values["ladder"]):
            problems += apply_rules(SIZE_RULES, size, ("ladder", i))
    return problems + apply_rules(SWEEP_RULES, values)
