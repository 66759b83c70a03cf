"""The sweep file, typed and validated once at the edge: `load_sweep` reads it into `SweepConfig`
(tasks.config.schema), and everything downstream trusts it."""

from tasks.config.load import (
    PROJECT_ROOT,
    ConfigError,
    fit_config,
    load_sweep,
    parse_overrides,
    resolve_sweep_path,
    sweep_from_dict,
)
from tasks.config.schema import DataConfig, FitConfig, ResourcesConfig, SweepConfig

__all__ = [
    "PROJECT_ROOT",
    "ConfigError",
    "DataConfig",
    "FitConfig",
    "ResourcesConfig",
    "SweepConfig",
    "fit_config",
    "load_sweep",
    "parse_overrides",
    "resolve_sweep_path",
    "sweep_from_dict",
]
