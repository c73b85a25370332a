"""Confidence intervals and calibration numbers shared by every section of an evaluation.

Bootstrap: resample cases with replacement and take percentiles of the statistic (scikit-learn and scipy give the
metrics; this only draws the cases). A draw in which the statistic cannot be computed (one class left, no
comparable pair) is skipped rather than counted, and an interval from fewer than half the draws is not given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import mannwhitneyu

Statistic = Callable[..., float]


def safe(value: object) -> float | None:
    """A JSON-safe number: NaN and infinities (and None) become None."""
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U of the positives' scores over the negatives', divided by n_pos x n_neg (scipy;
    the same number as scikit-learn's roc_auc_score, ties counted half, at a fraction of its cost: the bootstrap
    calls it thousands of times). A ValueError when a class is missing."""
    y = np.asarray(y)
    positives, negatives = p[y == 1], p[y == 0]
    if not len(positives) or not len(negatives):
        raise ValueError("the AUC needs both classes")
    return float(mannwhitneyu(positives, negatives, method="asymptotic").statistic
                 / (len(positives) * len(negatives)))


def _draws(statistic: Statistic, arrays: Sequence[np.ndarray], indices: np.ndarray) -> list[float]:
    values = []
    for index in indices:
        try:
            value = float(statistic(*(np.asarray(a)[index] for a in arrays)))
        except ValueError:
            continue
        if math.isfinite(value):
            values.append(value)
    return values


def _interval(values: list[float], n_boot: int, level: float) -> tuple[float | None, float | None]:
    if n_boot <= 0 or len(values) < n_boot / 2:
        return None, None
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) case indices drawn with replacement: the same draws for every statistic of one seed."""
    return np.random.default_rng(seed).integers(0, n, size=(max(n_boot, 0), n))


def bootstrap_ci(statistic: Statistic, arrays: Sequence[np.ndarray], n_boot: int, seed: int,
                 level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of ``statistic(*arrays)`` over ``n_boot`` case resamples; (None, None) when fewer than
    half of the draws give a finite value."""
    n = len(arrays[0])
    if n == 0:
        return None, None
    return _interval(_draws(statistic, arrays, bootstrap_indices(n, n_boot, seed)), n_boot, level)


def paired_bootstrap_ci(statistic: Statistic, arrays_a: Sequence[np.ndarray], arrays_b: Sequence[np.ndarray],
                        n_boot: int, seed: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Interval of ``statistic(a) - statistic(b)`` when both are computed on the SAME resampled cases (the arrays
    of ``a`` and ``b`` are aligned case by case): what a comparison of two models on one cohort needs."""
    n = len(arrays_a[0])
    if n == 0 or any(len(a) != n for a in (*arrays_a, *arrays_b)):
        raise ValueError("paired bootstrap: both sides need the same cases")
    k = len(arrays_a)

    def difference(*arrays: np.ndarray) -> float:
        return float(statistic(*arrays[:k])) - float(statistic(*arrays[k:]))

    return bootstrap_ci(difference, [*arrays_a, *arrays_b], n_boot, seed, level)


def _bins(p: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((np.asarray(p, np.float64) * bins).astype(int), bins - 1)


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, list]:
    """Reliability diagram data over equal-width probability bins (non-empty bins only): the mean predicted
    probability, the observed fraction of positives and the number of cases of each bin."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    which = _bins(p, bins)
    out: dict[str, list] = {"mean_predicted": [], "fraction_positive": [], "count": []}
    for b in range(bins):
        members = which == b
        if members.any():
            out["mean_predicted"].append(float(p[members].mean()))
            out["fraction_positive"].append(float(y[members].mean()))
            out["count"].append(int(members.sum()))
    return out


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Sum over equal-width bins of (bin share of cases) x |observed fraction - mean predicted probability|."""
    table = reliability(y, p, bins)
    n = sum(table["count"])
    if n == 0:
        raise ValueError("no cases")
    return float(sum(c / n * abs(o - m) for m, o, c in zip(table["mean_predicted"], table["fraction_positive"],
                                                           table["count"])))
