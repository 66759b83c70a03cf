"""How the report writes a number: a few significant figures, an interval as 'value [lo, hi]'."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tasks.fit.entries import Interval

MISSING = "–"


def fmt(x, digits: int = 3) -> str:
    """`digits` significant figures; scientific outside [0.01, 10^4) as 1.23e19 (no '+', no padding)."""
    if isinstance(x, str):
        return x
    if x is None or pd.isna(x) or not math.isfinite(x):
        return MISSING
    x = float(x)
    if x == 0 or 1e-2 <= abs(x) < 1e4:
        return np.format_float_positional(x, precision=digits, unique=False, fractional=False, trim="-")
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def fmt_interval(iv: Interval | None, digits: int = 3) -> str:
    """'value [lo, hi]' from a fits interval, or the value alone when there was no bootstrap."""
    if not iv:
        return MISSING
    if iv.get("lo") is None or iv.get("hi") is None:
        return fmt(iv.get("value"), digits)
    return f"{fmt(iv['value'], digits)} [{fmt(iv['lo'], digits)}, {fmt(iv['hi'], digits)}]"
