"""Two bundles on the same cases: per-marker AUC differences with a paired bootstrap, and tests across markers.

Only the cases both bundles predicted (out of fold) and whose label is known are compared, and each bootstrap draw
resamples the same cases for both, so the interval reflects the difference between the models rather than between
case mixes. Across markers, the per-marker AUCs are paired for a Wilcoxon signed-rank and a paired t-test (scipy).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import ttest_rel, wilcoxon
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score

from neuroradfm.evaluate.data import EvalData
from neuroradfm.evaluate.markers_eval import MIN_PER_CLASS_SCORED, not_evaluable
from neuroradfm.evaluate.statistics import auc, paired_bootstrap_ci, safe


def _marker(key: str, labels: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, *, seed: int, n_boot: int) -> dict:
    labels = np.asarray(labels, np.float64)
    both = ~np.isnan(labels) & np.isfinite(prob_a) & np.isfinite(prob_b)
    y, a, b = labels[both].astype(int), prob_a[both], prob_b[both]
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    if n_pos < MIN_PER_CLASS_SCORED or n_neg < MIN_PER_CLASS_SCORED:
        return not_evaluable(f"{key}: cases predicted by both bundles: {n_pos} positive / {n_neg} negative")
    auc_a, auc_b = float(roc_auc_score(y, a)), float(roc_auc_score(y, b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # one-class resamples: skipped by the bootstrap
        low, high = paired_bootstrap_ci(auc, [y, a], [y, b], n_boot, seed)
    return {"status": "ok", "auc_a": auc_a, "auc_b": auc_b, "difference": auc_a - auc_b,
            "ci": [safe(low), safe(high)], "n": int(len(y)), "n_pos": n_pos, "n_neg": n_neg}


def _wilcoxon(a: list[float], b: list[float]) -> dict:
    if len(a) < 2:
        return not_evaluable(f"{len(a)} marker(s) evaluable for both bundles (need 2)")
    if all(x == y for x, y in zip(a, b)):
        return not_evaluable(f"all {len(a)} per-marker AUC differences are zero")
    result = wilcoxon(a, b)
    return {"status": "ok", "statistic": safe(result.statistic), "p_value": safe(result.pvalue), "n_markers": len(a)}


def _t_test(a: list[float], b: list[float]) -> dict:
    if len(a) < 2:
        return not_evaluable(f"{len(a)} marker(s) evaluable for both bundles (need 2)")
    differences = np.subtract(a, b)
    if np.ptp(differences) == 0:
        return not_evaluable(f"all {len(a)} per-marker AUC differences are equal ({differences[0]:.4g}): "
                             "no variance for a t-test")
    result = ttest_rel(a, b)
    return {"status": "ok", "statistic": safe(result.statistic), "p_value": safe(result.pvalue), "n_markers": len(a)}


def compare_bundles(label_a: str, oof_a: dict[str, np.ndarray], label_b: str, oof_b: dict[str, np.ndarray],
                    data: EvalData, *, seed: int = 0, n_boot: int = 1000,
                    summary: dict[str, tuple[float | None, float | None]] | None = None) -> dict:
    """One ``comparison`` item of metrics.json: bundle ``a`` minus bundle ``b``, from the out-of-fold marker
    probabilities of ``evaluate_markers`` (NaN: not predicted)."""
    markers: dict = {}
    aucs_a: list[float] = []
    aucs_b: list[float] = []
    for key, labels in data.labels.items():
        missing = [label for label, oof in ((label_a, oof_a), (label_b, oof_b)) if key not in oof]
        if missing:
            markers[key] = not_evaluable(f"{key}: no out-of-fold predictions from {' and '.join(missing)}")
            continue
        entry = _marker(key, labels, np.asarray(oof_a[key], np.float64), np.asarray(oof_b[key], np.float64),
                        seed=seed, n_boot=n_boot)
        markers[key] = entry
        if entry["status"] == "ok":
            aucs_a.append(entry["auc_a"])
            aucs_b.append(entry["auc_b"])
    return {"a": label_a, "b": label_b, "markers": markers,
            "wilcoxon": _wilcoxon(aucs_a, aucs_b), "t_test": _t_test(aucs_a, aucs_b),
            "summary": {metric: {"a": safe(a), "b": safe(b)} for metric, (a, b) in (summary or {}).items()}}
