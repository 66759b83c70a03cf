"""Reading a sweep: the file (or a shipped sweep by name), `--set` overrides, and one clear error.

Every rejection raises `ConfigError` with the file and every problem at once, field-level and cross-field,
each with its field path, its line in the file and what would be valid, before any compute is spent.
`--set key=value` overrides go through the same gate as the file.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tasks.config.cluster import ClusterConfig
from tasks.config.partial import partial_fields, section_model
from tasks.config.rules import Loc, Problem, cross_field_problems, problem_line
from tasks.config.schema import FitConfig, SizeConfig, SweepConfig

M = TypeVar("M", bound=BaseModel)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A sweep file or parameter that cannot run; the message names the field and what is valid."""


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key.sub=value` strings to a dict; values are parsed as YAML (numbers, lists, booleans)."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--set {p!r}: expected key=value, e.g. train.batch_tokens=2048")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def resolve_sweep_path(sweep: str) -> Path:
    """A sweep file as given, else relative to the project, else a shipped sweep by name (`pile`):
    a Prefect worker may run the flow from another folder."""
    p = Path(sweep).expanduser()
    if p.is_file() or p.is_absolute():
        return p
    for candidate in (PROJECT_ROOT / sweep, PROJECT_ROOT / "deployments" / "sweeps" / f"{sweep}.yaml"):
        if candidate.is_file():
            return candidate
    return p


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read and validate a sweep file; raise one ConfigError listing every problem, each with its field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path} (the shipped ones are in deployments/sweeps/)")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
        lines = _field_lines(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sweep fields at the top level")
    _read_profile(raw, path.parent)
    for k, v in (overrides or {}).items():
        _set_path(raw, k, v)
    _read_profile(raw, path.parent)  # an override may name another profile
    where = _Where(lines, [tuple(k.split(".")) for k in overrides or {}])
    return _validated(SweepConfig, raw, str(path), where=where)


def _read_profile(raw: dict, sweep_dir: Path) -> None:
    """A `cluster` given as a profile file's path becomes the file's settings, checked against the file."""
    name = raw.get("cluster")
    if not isinstance(name, str):
        return
    candidates = [Path(name).expanduser(), sweep_dir / name, PROJECT_ROOT / name]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise ConfigError(f"cluster: profile file {name!r} not found (examples: deployments/clusters/)")
    text = path.read_text()
    try:
        profile = yaml.safe_load(text) or {}
        lines = _field_lines(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    _validated(ClusterConfig, profile, str(path), what="invalid cluster profile", where=_Where(lines, []))
    raw["cluster"] = profile


def fit_config(fields: dict[str, Any], source: str = "fit options") -> FitConfig:
    """FitConfig from loose fields (the `scaling fit` flags); ConfigError naming the field on bad input."""
    return _validated(FitConfig, fields, source, what="invalid")


def sweep_from_dict(raw: dict, source: str = "sweep") -> SweepConfig:
    return _validated(SweepConfig, raw, source)


def _validated(model: type[M], raw: Any, source: str, what: str = "invalid sweep", where: _Where | None = None) -> M:
    """`model` from `raw`, else ConfigError listing pydantic's field errors and (for a sweep) every
    cross-field rule whose fields are valid, in the order of the file."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
    problems = _field_problems(errors, raw, model)
    if model is SweepConfig:
        problems += cross_field_problems(partial_fields(SweepConfig, raw))
    # The models' own rule errors, should the re-derived ones somehow miss them: never an empty list.
    problems = problems or [(err["loc"], err["msg"]) for err in errors]
    raise ConfigError(_report(problems, f"{source}: {what}", where or _Where({}, [])))


def _report(problems: list[Problem], header: str, where: _Where) -> str:
    located = sorted(((*where(loc), problem_line(loc, msg)) for loc, msg in problems), key=lambda p: p[0])
    count = f"{len(located)} problem{'s' if len(located) > 1 else ''}"
    return f"{header}, {count}:\n" + "\n".join(f"  {label}{line}" for _, label, line in located)


def _field_problems(errors: list[dict], raw: Any, root: type[BaseModel]) -> list[Problem]:
    """pydantic's errors as problems at file paths; a union's alternatives at one field become one line."""
    merged: dict[Loc, list[dict]] = {}
    for err in errors:
        if err["type"] != "cross_field":  # a rule's error: cross_field_problems reports it, and the others
            merged.setdefault(_file_loc(raw, err["loc"]), []).append(err)
    return [(loc, _message(errs, loc, root)) for loc, errs in merged.items()]


def _file_loc(raw: Any, loc: tuple) -> Loc:
    """`loc` without the union-branch tags pydantic puts in it ('sizes', 'constrained-int'): the file's path."""
    out, node = [], raw
    for part in loc:
        if isinstance(node, dict):
            out.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            out.append(part)
            node = node[part] if part < len(node) else None
    return tuple(out)


def _message(errs: list[dict], loc: Loc, root: type[BaseModel]) -> str:
    if errs[0]["type"] == "extra_forbidden":
        return _unknown_field(loc, root)
    msgs = list(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errs))
    msg = " or ".join([msgs[0], *(m[:1].lower() + m[1:] for m in msgs[1:])])
    value = errs[0].get("input")
    quoted = isinstance(value, str) and repr(value) in msg  # "unknown architecture 'mamba9'" names it already
    if errs[0]["type"] != "missing" and isinstance(value, (str, int, float, bool)) and not quoted:
        msg += f" (got {value!r})"
    return msg


def _unknown_field(loc: Loc, root: type[BaseModel]) -> str:
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, str) and model is not None and part in model.model_fields:
            model = SizeConfig if (model is SweepConfig and part == "ladder") else section_model(model, part)
    if model is None:
        return "unknown field"
    fields = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field; {hint}valid: {', '.join(fields)}"


def _field_lines(text: str) -> dict[Loc, int]:
    """Each field's line in the sweep file, from YAML's node tree, for pointing at the problems."""
    lines: dict[Loc, int] = {}

    def walk(node: yaml.Node, loc: Loc) -> None:
        if len(loc) > 32:  # an alias may make a node hold itself
            return
        if isinstance(node, yaml.MappingNode):
            entries = [(key.value, key, value) for key, value in node.value]
        elif isinstance(node, yaml.SequenceNode):
            entries = [(i, item, item) for i, item in enumerate(node.value)]
        else:
            return
        for key, marked, child in entries:
            lines[(*loc, key)] = marked.start_mark.line + 1
            walk(child, (*loc, key))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


class _Where:
    """Where a problem's field was given: its line in the file (a missing field: its section's), or --set."""

    def __init__(self, lines: dict[Loc, int], overridden: list[Loc]):
        self.overridden = set(overridden)
        self.lines = {loc: n for loc, n in lines.items() if not any(loc[: len(o)] == o for o in self.overridden)}

    def __call__(self, loc: Loc) -> tuple[float, str]:
        """The sort key and the label."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.overridden:
                return math.inf, "--set "
            if loc[:n] in self.lines:
                return self.lines[loc[:n]], f"line {self.lines[loc[:n]]}, "
        return math.inf, ""
