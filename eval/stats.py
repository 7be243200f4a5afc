"""Summaries over seeds: mean and sample standard deviation, and their ``mean ± std`` cell.

The one place these are computed and written, for the results store (:func:`eval.store.aggregate`),
the tables (:mod:`eval.tables`), the few-shot probe (:func:`eval.probes.fewshot_probe`) and the
training comparisons and experiments (``training/experiments/``).
"""
from __future__ import annotations

import math
import sys

import numpy as np

__all__ = ["format_mean_std", "is_missing", "mean_std"]


def is_missing(v) -> bool:
    """``None``, a float NaN (Python or numpy), or pandas' ``NA`` / ``NaT``."""
    if v is None:
        return True
    pd = sys.modules.get("pandas")  # pandas' missing markers can only exist once pandas is imported
    if pd is not None and (v is pd.NA or v is pd.NaT):
        return True
    return isinstance(v, (float, np.floating)) and math.isnan(v)


def mean_std(values, missing=None) -> tuple:
    """Mean and sample standard deviation (``ddof=1``) of ``values``, both sums correctly rounded
    (``math.fsum``), so the result does not depend on the order of the values.

    ``std`` is ``missing`` for fewer than two values; both are ``missing`` for none."""
    values = list(values)
    n = len(values)
    if n == 0:
        return missing, missing
    mean = math.fsum(values) / n
    if n < 2:
        return mean, missing
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def format_mean_std(mean, std, missing: str = "") -> str:
    """``"89.12 ± 0.31"``; ``"89.12"`` when ``std`` is missing (one seed); ``missing`` when ``mean``
    is (see :func:`is_missing`)."""
    if is_missing(mean):
        return missing
    if is_missing(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"
