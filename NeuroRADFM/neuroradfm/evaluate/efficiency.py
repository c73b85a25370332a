"""Data efficiency: how the out-of-fold AUC of a marker probe grows with the number of labelled training cases.

Each outer fold's labelled training cases are subsampled (k per class, or a stratified fraction) once per seed, a
probe is fitted on the subsample and scored on the full test fold; the spread over folds x seeds is what a reader
compares between bundles. Features are standardised with the whole training fold (no labels are used for that).
The probe is the class-balanced logistic regression of ``probes.fit_marker_probe`` with its penalty chosen ONCE
per fold by the same inner cross-validation on all the fold's labelled training cases (``probes.choose_c``) and kept
for every subsample of that fold: a subsample of one or a few cases per class cannot be cross-validated, and a
curve drawn at one penalty shows the effect of fewer labels alone (a fold with a single labelled case of a class, or
a single subject of it when a subject has several cases and the inner folds are grouped by subject, uses FALLBACK_C).
The AUC needs no threshold.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from neuroradfm.evaluate.data import EvalData, Folds
from neuroradfm.evaluate.markers_eval import not_evaluable
from neuroradfm.folds import class_folds
from neuroradfm.probes import choose_c, fit_scaling

INNER_FOLDS = 5
FALLBACK_C = 1.0
"""The penalty of a fold with a single labelled case of a class (no inner cross-validation possible)."""


def _fit_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, c: float) -> np.ndarray:
    """Test-case decision scores (monotone in the probability, which is all the AUC needs)."""
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x_train, y_train.astype(int))
    return model.decision_function(x_test)


def _fold_c(x_train: np.ndarray, y_train: np.ndarray, subjects: np.ndarray, seed: int) -> float:
    """The fold's penalty by ``choose_c`` on inner folds grouped by subject when one has several cases (a follow-up
    scan in the other inner part would favour a weak penalty); FALLBACK_C when a class has a single case or, grouped,
    a single subject."""
    if np.bincount(y_train, minlength=2).min() < 2:
        return FALLBACK_C
    try:
        cv = class_folds(y_train, INNER_FOLDS, seed, subjects)
    except ValueError:
        return FALLBACK_C
    return choose_c(x_train, y_train, cv)


def _per_class_sample(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c in (0, 1)])


def _fraction_sample(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Stratified: round(fraction x class size) cases of each class, at least one."""
    chosen = []
    for c in (0, 1):
        members = np.flatnonzero(y == c)
        size = min(len(members), max(1, int(round(fraction * len(members)))))
        chosen.append(rng.choice(members, size=size, replace=False))
    return np.concatenate(chosen)


def _summary(aucs: list[float], reason: str) -> dict:
    if not aucs:
        return not_evaluable(reason)
    sd = float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None
    return {"status": "ok", "mean": float(np.mean(aucs)), "sd": sd, "n_runs": len(aucs)}


def data_efficiency(features: np.ndarray, data: EvalData, folds: Folds, *,
                    seeds: tuple[int, ...] = (0, 1, 2, 3, 4), per_class: tuple[int, ...] = (1, 5, 10),
                    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)) -> dict:
    """``results[label]["data_efficiency"]``: per marker, the test-fold AUC (mean, sample sd, number of fold x seed
    runs) of probes fitted on k labelled cases per class and on stratified fractions of the labelled training cases.
    A fold whose test cases lack a class gives no run; a fold with fewer than k cases of a class skips that k."""
    features = np.asarray(features, np.float64)
    subjects = np.asarray(data.subjects)
    results: dict = {}
    for key, labels in data.labels.items():
        labels = np.asarray(labels, np.float64)
        runs: dict[tuple[str, str], list[float]] = {("per_class", str(k)): [] for k in per_class}
        runs.update({("fraction", str(float(f))): [] for f in fractions})
        skips: dict[tuple[str, str], list[str]] = {setting: [] for setting in runs}
        notes: list[str] = []
        for number, (train, test) in enumerate(folds, start=1):
            train, test = np.asarray(train, int), np.asarray(test, int)
            train_known = train[~np.isnan(labels[train])]
            test_known = test[~np.isnan(labels[test])]
            y_train, y_test = labels[train_known].astype(int), labels[test_known].astype(int)
            train_pos, train_neg = int(y_train.sum()), int(len(y_train) - y_train.sum())
            test_pos, test_neg = int(y_test.sum()), int(len(y_test) - y_test.sum())
            if test_pos == 0 or test_neg == 0:
                notes.append(f"fold {number}: test has {test_pos} positive / {test_neg} negative, no AUC")
                continue
            if train_pos == 0 or train_neg == 0:
                notes.append(f"fold {number}: training has {train_pos} positive / {train_neg} negative")
                continue
            mean, scale = fit_scaling(features[train])
            x_train = (features[train_known] - mean) / scale
            x_test = (features[test_known] - mean) / scale
            c = _fold_c(x_train, y_train, subjects[train_known], seeds[0])
            for seed in seeds:
                rng = np.random.default_rng([seed, number])
                for k in per_class:
                    setting = ("per_class", str(k))
                    if min(train_pos, train_neg) < k:
                        if seed == seeds[0]:
                            skips[setting].append(f"fold {number}: training has {train_pos} positive / "
                                                  f"{train_neg} negative, fewer than {k} of a class")
                        continue
                    chosen = _per_class_sample(y_train, k, rng)
                    scores = _fit_scores(x_train[chosen], y_train[chosen], x_test, c)
                    runs[setting].append(float(roc_auc_score(y_test, scores)))
                for fraction in fractions:
                    chosen = _fraction_sample(y_train, fraction, rng)
                    scores = _fit_scores(x_train[chosen], y_train[chosen], x_test, c)
                    runs[("fraction", str(float(fraction)))].append(float(roc_auc_score(y_test, scores)))
        entry: dict = {"status": "ok", "per_class": {}, "fraction": {}}
        for (kind, name), aucs in runs.items():
            reason = "; ".join(notes + skips[(kind, name)]) or "no folds"
            entry[kind][name] = _summary(aucs, f"{key}: {kind.replace('_', ' ')} {name}: no run ({reason})")
        if not any(aucs for aucs in runs.values()):
            results[key] = not_evaluable(f"{key}: no fold could be evaluated ({'; '.join(notes) or 'no folds'})")
            continue
        entry["folds_not_evaluable"] = notes
        results[key] = entry
    return results
