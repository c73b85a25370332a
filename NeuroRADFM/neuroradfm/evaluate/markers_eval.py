"""Marker and continuous-target probes evaluated out of fold: what a frozen embedding predicts on cases it never saw.

Each outer training fold is standardised on its own rows and gets the very probe ``fit-heads`` fits
(``probes.fit_marker_probe``: class-balanced logistic regression, penalty and threshold from an inner cross-validation
of the training fold only, grouped by subject like the outer folds), so the test labels choose nothing. The test
cases' probabilities and calls are pooled over the folds and scored pooled and per site; a fold or a scope that is
too small is reported as "not evaluable" with its counts, never dropped silently.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit
from scipy.stats import spearmanr
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import RidgeCV
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, recall_score, roc_auc_score

from neuroradfm.evaluate.data import EvalData, Folds
from neuroradfm.evaluate.statistics import auc, bootstrap_ci, expected_calibration_error, reliability, safe
from neuroradfm.folds import case_folds, repeated
from neuroradfm.probes import fit_marker_probe, fit_scaling, marker_problem

MIN_PER_CLASS_SCORED = 2
"""Positives and negatives a scope (pooled, one site) needs among its tested cases for an AUC to mean anything."""

MIN_CONTINUOUS_SCORED = 5
"""Tested cases with a known value a scope needs for a Spearman correlation."""

MIN_CONTINUOUS_TRAINING = 3
"""Training cases with a known value a fold's ridge probe needs (its leave-one-out alpha search needs a few)."""

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))
"""Ridge penalties the probe's internal (efficient leave-one-out) cross-validation chooses among."""
RIDGE_GROUPED_FOLDS = 5
"""Folds of that cross-validation when it is grouped by subject (leave-one-out would split a subject's scans)."""


def not_evaluable(reason: str) -> dict:
    """The metrics.json entry of a result that cannot be computed: never silent, always with its reason."""
    return {"status": "not evaluable", "reason": reason}


def _counts(y: np.ndarray) -> tuple[int, int]:
    y = np.asarray(y, np.float64)
    return int(np.sum(y == 1)), int(np.sum(y == 0))


def _count_text(y: np.ndarray) -> str:
    n_pos, n_neg = _counts(y)
    return f"{n_pos} positive / {n_neg} negative"


def _interval(ci: tuple[float | None, float | None]) -> list[float | None]:
    return [safe(ci[0]), safe(ci[1])]


def auc_ci(y: np.ndarray, p: np.ndarray, *, seed: int, n_boot: int) -> list[float | None]:
    """Bootstrap interval of the AUC; resamples left with one class are skipped by ``bootstrap_ci`` (sklearn's
    warning about them is expected, not news)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return _interval(bootstrap_ci(auc, [y, p], n_boot, seed))


def _standardise(features: np.ndarray, train: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training rows and ``rows`` standardised with the training rows' mean and scale (as fit-heads does)."""
    mean, scale = fit_scaling(features[train])
    return (features[train] - mean) / scale, (features[rows] - mean) / scale


def _binary_scope(key: str, scope: str, y: np.ndarray, p: np.ndarray, call: np.ndarray, fold: np.ndarray,
                  thresholds: dict[int, float], *, seed: int, n_boot: int) -> dict:
    """Discrimination, calls and calibration of one scope's tested cases (labels known)."""
    n_pos, n_neg = _counts(y)
    if n_pos < MIN_PER_CLASS_SCORED or n_neg < MIN_PER_CLASS_SCORED:
        return not_evaluable(f"{key}: {scope}: {n_pos} positive / {n_neg} negative")
    y_int = y.astype(int)
    call_int = call.astype(int)
    return {
        "status": "ok", "n": int(len(y)), "n_pos": n_pos, "n_neg": n_neg,
        "auc": float(roc_auc_score(y_int, p)),
        "auc_ci": auc_ci(y_int, p, seed=seed, n_boot=n_boot),
        "balanced_accuracy": float(balanced_accuracy_score(y_int, call_int)),
        "sensitivity": float(recall_score(y_int, call_int, pos_label=1)),
        "specificity": float(recall_score(y_int, call_int, pos_label=0)),
        "brier": float(brier_score_loss(y_int, p)),
        "ece": float(expected_calibration_error(y, p)),
        # the mean of the thresholds of the folds that tested this scope's cases (each fold counted once)
        "threshold_mean": float(np.mean([thresholds[f] for f in np.unique(fold)])),
        "reliability": reliability(y, p),
    }


def evaluate_markers(features: np.ndarray, data: EvalData, folds: Folds, *, seed: int = 0,
                     n_boot: int = 1000) -> tuple[dict, dict[str, np.ndarray]]:
    """Out-of-fold marker probes: ``results[label]["markers"]`` and, per marker, the (N,) out-of-fold probabilities
    (NaN where a case was in no evaluated test fold or its label is unknown), which the bundle comparison pairs."""
    features = np.asarray(features, np.float64)
    sites = np.asarray(data.sites)
    subjects = np.asarray(data.subjects)  # the inner folds of each probe keep a subject's scans together
    n = len(data)
    tested_sites = sorted({str(s) for _, test in folds for s in sites[np.asarray(test, int)]})
    results: dict = {}
    oof: dict[str, np.ndarray] = {}
    for key, labels in data.labels.items():
        labels = np.asarray(labels, np.float64)
        prob = np.full(n, np.nan)
        call = np.zeros(n, bool)
        fold_of = np.full(n, -1)
        thresholds: dict[int, float] = {}
        skipped: list[str] = []
        for number, (train, test) in enumerate(folds, start=1):
            train, test = np.asarray(train, int), np.asarray(test, int)
            problem = marker_problem(labels[train], key)
            if problem:
                counts = labels[train]
                known = counts[~np.isnan(counts)]
                if np.isin(known, (0.0, 1.0)).all():
                    skipped.append(f"fold {number}: training has {_count_text(known)}")
                else:
                    skipped.append(f"fold {number}: {problem}")
                continue
            test = test[~np.isnan(labels[test])]
            if len(test) == 0:
                skipped.append(f"fold {number}: no test case has a known {key} label")
                continue
            train_std, test_std = _standardise(features, train, test)
            try:
                head = fit_marker_probe(train_std, labels[train], key, seed=seed, subjects=subjects[train])
            except ValueError as error:  # too few subjects of a class for inner folds grouped by subject
                skipped.append(f"fold {number}: {error}")
                continue
            p = expit(test_std @ head.coef + head.intercept)
            prob[test] = p
            call[test] = p >= head.threshold
            fold_of[test] = number
            thresholds[number] = float(head.threshold)
        oof[key] = prob
        if not thresholds:
            reason = "; ".join(skipped) or "no folds"
            results[key] = not_evaluable(f"{key}: no outer fold could be evaluated ({reason})")
            continue
        tested = ~np.isnan(prob)
        y, p, c, f = labels[tested], prob[tested], call[tested], fold_of[tested]
        site_of = sites[tested]
        entry = {"status": "ok",
                 "pooled": _binary_scope(key, "pooled", y, p, c, f, thresholds, seed=seed, n_boot=n_boot),
                 "sites": {},
                 "folds_not_evaluable": skipped}
        for site in tested_sites:
            here = site_of == site
            entry["sites"][site] = _binary_scope(key, site, y[here], p[here], c[here], f[here], thresholds,
                                                 seed=seed, n_boot=n_boot)
        results[key] = entry
    return results, oof


def _spearman(y: np.ndarray, prediction: np.ndarray) -> float:
    """Spearman's rho; a ValueError (skipped by the bootstrap) when either side is constant."""
    if np.ptp(y) == 0 or np.ptp(prediction) == 0:
        raise ValueError("constant values")
    return float(spearmanr(y, prediction).statistic)


def _continuous_scope(target: str, scope: str, y: np.ndarray, prediction: np.ndarray, *, seed: int,
                      n_boot: int) -> dict:
    if len(y) < MIN_CONTINUOUS_SCORED:
        return not_evaluable(f"{target}: {scope}: {len(y)} tested cases with a known value "
                             f"(need {MIN_CONTINUOUS_SCORED})")
    if np.ptp(y) == 0 or np.ptp(prediction) == 0:
        which = "known values" if np.ptp(y) == 0 else "predictions"
        return not_evaluable(f"{target}: {scope}: the {len(y)} {which} are all equal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ties and small n: scipy's own caveats, the numbers stand
        result = spearmanr(y, prediction)
    return {"status": "ok", "n": int(len(y)), "spearman": safe(result.statistic),
            "spearman_ci": _interval(bootstrap_ci(_spearman, [y, prediction], n_boot, seed)),
            "p_value": safe(result.pvalue)}


def _ridge(subjects: np.ndarray, seed: int) -> RidgeCV:
    """The continuous probe: RidgeCV's efficient leave-one-out choice of alpha, or, when a subject of the training
    rows has several cases (leave-one-out would keep its other scans in training), the same mean squared error over
    folds grouped by subject (``folds.case_folds``)."""
    if not repeated(subjects):
        return RidgeCV(alphas=RIDGE_ALPHAS)
    return RidgeCV(alphas=RIDGE_ALPHAS, scoring="neg_mean_squared_error",
                   cv=case_folds(len(subjects), RIDGE_GROUPED_FOLDS, seed, subjects))


def evaluate_continuous(features: np.ndarray, data: EvalData, folds: Folds, *, seed: int = 0,
                        n_boot: int = 1000) -> dict:
    """Out-of-fold ridge probes for the continuous targets (``results[label]["continuous"]``): Spearman's rho between
    the known values and the predictions, pooled (top level) and per site."""
    features = np.asarray(features, np.float64)
    sites = np.asarray(data.sites)
    subjects = np.asarray(data.subjects)
    n = len(data)
    tested_sites = sorted({str(s) for _, test in folds for s in sites[np.asarray(test, int)]})
    results: dict = {}
    for target, values in data.continuous.items():
        values = np.asarray(values, np.float64)
        prediction = np.full(n, np.nan)
        skipped: list[str] = []
        alphas: list[float] = []
        for number, (train, test) in enumerate(folds, start=1):
            train, test = np.asarray(train, int), np.asarray(test, int)
            known_train = train[~np.isnan(values[train])]
            test = test[~np.isnan(values[test])]
            if len(known_train) < MIN_CONTINUOUS_TRAINING:
                skipped.append(f"fold {number}: training has {len(known_train)} known {target} values "
                               f"(need {MIN_CONTINUOUS_TRAINING})")
                continue
            if len(test) == 0:
                skipped.append(f"fold {number}: no test case has a known {target} value")
                continue
            train_std, test_std = _standardise(features, train, test)
            known_std = train_std[~np.isnan(values[train])]
            try:
                model = _ridge(subjects[known_train], seed).fit(known_std, values[known_train])
            except ValueError as error:
                skipped.append(f"fold {number}: {target}: {error}")
                continue
            prediction[test] = model.predict(test_std)
            alphas.append(float(model.alpha_))
        tested = ~np.isnan(prediction)
        if not tested.any():
            results[target] = not_evaluable(f"{target}: no outer fold could be evaluated "
                                            f"({'; '.join(skipped) or 'no folds'})")
            continue
        y, p, site_of = values[tested], prediction[tested], sites[tested]
        pooled = _continuous_scope(target, "pooled", y, p, seed=seed, n_boot=n_boot)
        if pooled["status"] != "ok":
            results[target] = pooled
            continue
        entry = {**pooled, "alpha_mean": float(np.mean(alphas)), "folds_not_evaluable": skipped,
                 "sites": {site: _continuous_scope(target, site, y[site_of == site], p[site_of == site], seed=seed,
                                                   n_boot=n_boot) for site in tested_sites}}
        results[target] = entry
    return results
