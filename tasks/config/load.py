"""Reading a sweep: the file (or a shipped sweep by name), `--set` overrides, and one clear error.

Every rejection raises `ConfigError` with the file, the field path and what would be valid, before any
compute is spent. `--set key=value` overrides go through the same gate as the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tasks.config.schema import FitConfig, SweepConfig

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


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid sweep"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


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
    """Read and validate a sweep file; raise ConfigError naming the file and field on bad input."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path} (the shipped ones are in deployments/sweeps/)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sweep fields at the top level")
    for k, v in (overrides or {}).items():
        _set_path(raw, k, v)
    try:
        cfg = SweepConfig(**raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, str(path))) from None
    return cfg


def fit_config(fields: dict[str, Any], source: str = "fit options") -> FitConfig:
    """FitConfig from loose fields (the `scaling fit` flags); ConfigError naming the field on bad input."""
    try:
        return FitConfig(**fields)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source).replace("invalid sweep", "invalid")) from None


def sweep_from_dict(raw: dict, source: str = "sweep") -> SweepConfig:
    try:
        return SweepConfig(**raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None
