"""How every operator in `kernels` picks its path, one convention for all of them.

An operator declares its paths (`Impl`: a name, the function, and what keeps it from running
here) and, per device type, the order it prefers them in. `Dispatch` then

- honours an override: the operator's environment variable (SCALING_ATTENTION_IMPL, ...) naming
  one path. An unknown name is a ValueError naming the variable and the valid values; a path
  that cannot run here is a RuntimeError saying why. A forced path never silently changes;
- otherwise takes the first preferred path that can run;
- names the chosen path (`impl`), which `kernels.implementations()` records as the run's
  `<op>_impl` MLflow tag, so the override values are exactly the recorded names;
- on the first call per (device type, path) logs the path, or warns (RuntimeWarning) when a
  preferred faster path could not run and says why.

    _dispatch = Dispatch("wkv", "SCALING_WKV_IMPL", [Impl("chunked", wkv_fast), Impl("ref", wkv_ref)])
    _dispatch.impl("cpu")               # "chunked", or "ref" under SCALING_WKV_IMPL=ref
    _dispatch(k.device)(w, u, k, v)     # the chosen path's function, called
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def _runs_anywhere() -> str | None:
    return None


@dataclass(frozen=True)
class Impl:
    name: str
    """What the override accepts and the run records."""
    fn: Callable[..., Any]
    unavailable: Callable[[], str | None] = _runs_anywhere
    """Why the path cannot run in this process (a missing package, a failed build), or None."""


class Dispatch:
    def __init__(
        self,
        op: str,
        env_var: str,
        paths: Sequence[Impl],
        prefer: Sequence[str] | None = None,
        prefer_on: Mapping[str, Sequence[str]] | None = None,
    ):
        """`prefer`: the path names taken when nothing overrides them, in order of preference
        (default: the first path alone); `prefer_on`: a different order for some device types,
        {"cuda": (...)}. A path that is in no order runs only when the override names it (the
        references)."""
        self.op, self.env_var = op, env_var
        self.paths = {path.name: path for path in paths}
        default = tuple(prefer) if prefer else (paths[0].name,)
        self._prefer = {None: default} | {k: tuple(v) for k, v in (prefer_on or {}).items()}
        unknown = {name for order in self._prefer.values() for name in order} - self.paths.keys()
        if unknown:
            raise ValueError(f"{op}: preferred paths {sorted(unknown)} are not among {list(self.paths)}")
        self._log = logging.getLogger(f"kernels.{op}")
        self._announced: set[tuple[str, str]] = set()
        """(device type, path) pairs already logged or warned about; tests clear it."""

    def _order(self, device_type: str) -> tuple[str, ...]:
        return self._prefer.get(device_type, self._prefer[None])

    def impl(self, device: torch.device | str = "cpu") -> str:
        """The path taken for tensors on `device`: the override if set, else the first
        preferred path that can run."""
        choice = os.environ.get(self.env_var)
        if choice:
            if choice not in self.paths:
                raise ValueError(f"{self.env_var}={choice!r}; valid: {', '.join(self.paths)}")
            if why := self.paths[choice].unavailable():
                raise RuntimeError(f"{self.env_var}={choice}, but {why}")
            return choice
        device_type = torch.device(device).type
        reasons = []
        for name in self._order(device_type):
            if (why := self.paths[name].unavailable()) is None:
                return name
            reasons.append(f"{name}: {why}")
        raise RuntimeError(f"{self.op}: no path runs on {device_type} ({'; '.join(reasons)})")

    def __call__(self, device: torch.device | str) -> Callable[..., Any]:
        """The chosen path's function, announced on its first use on this device type."""
        device_type = torch.device(device).type
        name = self.impl(device_type)
        if (device_type, name) not in self._announced:
            self._announced.add((device_type, name))
            self._announce(device_type, name)
        return self.paths[name].fn

    def _announce(self, device_type: str, name: str) -> None:
        order = self._order(device_type)
        skipped = () if os.environ.get(self.env_var) else order[: order.index(name)]
        if skipped:
            why = "; ".join(f"{s}: {self.paths[s].unavailable()}" for s in skipped)
            warnings.warn(
                f"{self.op}: {device_type} tensors take the slower {name} path, since {why}",
                RuntimeWarning,
                stacklevel=4,  # the caller of the operator: _announce, __call__, the operator, its caller
            )
        else:
            self._log.info("%s: the %s path on %s", self.op, name, device_type)
