"""Where generated things go: one output folder, laid out by sweep name and run id.

<output>/data/tokens-<key>/     token caches (shared by sweeps on the same data)
<output>/runs/<run_id>/         one grid point: spec, checkpoints, curve parts, status, log
<output>/sweeps/<name>/         runs.parquet, curves.parquet, fits.json, sweep.yaml, report/
<output>/comparisons/<a>+<b>/   a report of several sweeps
<output>/mlflow.db, mlartifacts/  the default MLflow tracking store
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SWEEP_CONFIG = "sweep.yaml"  # in a sweep's folder: the sweep as it ran, overrides applied


@dataclass(frozen=True)
class Layout:
    output: Path

    @classmethod
    def at(cls, output: str | Path | None) -> Layout:
        """The given folder, else $SCALING_OUTPUT, else ./outputs."""
        return cls(Path(output or os.environ.get("SCALING_OUTPUT", "outputs")).expanduser().resolve())

    @property
    def data(self) -> Path:
        return self.output / "data"

    @property
    def runs(self) -> Path:
        return self.output / "runs"

    def run(self, run_id: str) -> Path:
        return self.runs / run_id

    def sweep(self, name: str) -> Path:
        return self.output / "sweeps" / name

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.output / 'mlflow.db'}"

    @property
    def artifacts(self) -> Path:
        return self.output / "mlartifacts"
