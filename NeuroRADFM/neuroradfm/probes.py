"""Linear probes on frozen embeddings: feature scaling, one logistic head per marker, OOD statistics.

Probes are the paper's downstream protocol: the encoder stays frozen, each marker gets a class-balanced
logistic regression on standardised embeddings, its penalty chosen by cross-validation and its decision
threshold on cross-validated probabilities (Youden's J), never on the fitted ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import cross_val_predict

from neuroradfm.folds import GROUP_COLUMN, Splits, case_folds, class_folds, repeated
from neuroradfm.models.heads import MarkerHead, OodHead


def fit_scaling(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale (std, with constant features left unscaled)."""
    mean = embeddings.mean(axis=0)
    scale = embeddings.std(axis=0)
    return mean, np.where(scale > 1e-8, scale, 1.0)


MIN_PER_CLASS = 2
"""Positive and negative cases (subjects, when a subject has several cases) a marker probe needs at the least: its
stratified cross-validation holds one of each out while the other fold trains."""


def marker_problem(labels: np.ndarray, key: str, subjects: Sequence[str] | None = None) -> str | None:
    """Why no probe for ``key`` can be fitted on these labels (NaN: unknown), or None when one can: a check
    that needs no embeddings, so a cohort can be judged from its manifest before any case is preprocessed.
    ``subjects`` (one per label): with repeated subjects the folds are grouped, so classes are counted in subjects."""
    labels = np.asarray(labels, dtype=np.float64)
    known = labels[~np.isnan(labels)]
    other = sorted(set(known.tolist()) - {0.0, 1.0})
    if other:
        return f"marker {key!r}: labels must be 0 or 1 (or empty when unknown), found {', '.join(map(str, other[:5]))}"
    counts = np.bincount(known.astype(int), minlength=2)
    if counts.min() < MIN_PER_CLASS:
        return (f"marker {key!r}: need at least {MIN_PER_CLASS} positive and {MIN_PER_CLASS} negative cases, "
                f"got {counts.tolist()}")
    known_subjects = None if subjects is None else np.asarray(subjects)[~np.isnan(labels)]
    if repeated(known_subjects):
        per_class = [len(set(known_subjects[known == c].tolist())) for c in (0.0, 1.0)]
        if min(per_class) < MIN_PER_CLASS:
            return (f"marker {key!r}: need at least {MIN_PER_CLASS} positive and {MIN_PER_CLASS} negative subjects "
                    f"(cross-validation grouped by {GROUP_COLUMN}), got {per_class}")
    return None


PROBE_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
"""Inverse penalties the inner cross-validation chooses among (scikit-learn's C, on standardised features)."""


def choose_c(x: np.ndarray, y: np.ndarray, cv: Splits, sample_weight: np.ndarray | None = None) -> float:
    """The probe's inverse penalty among PROBE_CS with the best cross-validated AUC on (x, y)."""
    search = LogisticRegressionCV(Cs=list(PROBE_CS), l1_ratios=(0.0,), cv=cv, scoring="roc_auc",
                                  class_weight="balanced", max_iter=5000, use_legacy_attributes=False).fit(
        x, y, **({} if sample_weight is None else {"sample_weight": sample_weight}))
    return float(np.ravel(search.C_)[0])


def fit_marker_probe(features: np.ndarray, labels: np.ndarray, key: str, *, c: float | None = None,
                     folds: int = 5, seed: int = 0, subjects: Sequence[str] | None = None,
                     sample_weight: np.ndarray | None = None) -> MarkerHead:
    """Class-balanced logistic probe on standardised features; rows whose label is NaN are left out.

    The one probe of ``fit-heads`` and of ``evaluate`` (which calls it on each outer training fold): the penalty is
    chosen by an inner stratified cross-validation of ``features`` (AUC; ``c`` fixes it instead), the decision
    threshold maximises Youden's J on the inner cross-validated probabilities (never on fitted ones). Metrics: that
    inner cross-validation's AUC and its balanced accuracy at the threshold, and the chosen C. ``subjects`` (one per
    row): when a subject has several cases the inner folds keep them together (``folds.class_folds``) and the metrics
    add ``n_subjects``. ``sample_weight`` (one per row, e.g. group-balanced weights: every group the same total weight)
    weights the fit, the threshold's ROC and the metrics, on top of the class balancing (metrics
    ``sample_weighted`` = 1).
    """
    problem = marker_problem(labels, key, subjects)
    if problem:
        raise ValueError(problem)
    labels = np.asarray(labels, dtype=np.float64)
    known = ~np.isnan(labels)
    x, y = features[known], labels[known].astype(int)
    weight = None if sample_weight is None else np.asarray(sample_weight, np.float64)[known]
    fit = {} if weight is None else {"sample_weight": weight}
    counts = np.bincount(y, minlength=2)
    groups = None if subjects is None else np.asarray(subjects)[known]
    try:
        cv = class_folds(y, folds, seed, groups)
    except ValueError as error:
        raise ValueError(f"marker {key!r}: {error}") from None
    c = choose_c(x, y, cv, weight) if c is None else c
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    cv_prob = cross_val_predict(model, x, y, cv=cv, method="predict_proba", params=fit)[:, 1]
    fpr, tpr, thresholds = roc_curve(y, cv_prob, sample_weight=weight)
    best = int(np.argmax(tpr - fpr))
    threshold = float(np.clip(thresholds[best], 1e-6, 1 - 1e-6))
    calls = cv_prob >= threshold
    w = np.ones(len(y)) if weight is None else weight
    balanced_accuracy = 0.5 * (np.average(calls[y == 1], weights=w[y == 1])
                               + np.average(~calls[y == 0], weights=w[y == 0]))
    model.fit(x, y, **fit)
    return MarkerHead(key=key, coef=model.coef_[0].astype(np.float64), intercept=float(model.intercept_[0]),
                      threshold=threshold,
                      metrics={"cv_auc": float(roc_auc_score(y, cv_prob, sample_weight=weight)),
                               "cv_balanced_accuracy": float(balanced_accuracy),
                               "n": int(len(y)), "n_positive": int(counts[1]), "c": c,
                               **({"n_subjects": len(set(groups.tolist()))} if repeated(groups) else {}),
                               **({} if weight is None else {"sample_weighted": 1.0})})


def fit_ood(features: np.ndarray, percentile: float = 99.0, folds: int = 5, seed: int = 0,
            subjects: Sequence[str] | None = None) -> OodHead:
    """Mahalanobis distance with a Ledoit-Wolf covariance; threshold = percentile of out-of-fold distances.

    A case's distance to a covariance fitted on itself is optimistic (with few cases and many features,
    much smaller than a new case's), so the threshold comes from each case's distance to the other folds'
    fit: a new case from the training distribution is then flagged about (100 - percentile) % of the time.
    For the same reason a subject's scans (``subjects``, one per row) stay in one fold.
    """
    estimator = LedoitWolf().fit(features)
    head = OodHead(mean=estimator.location_.astype(np.float64), precision=estimator.precision_.astype(np.float64),
                   threshold=0.0, percentile=percentile)
    distances = []
    for train, held_out in case_folds(len(features), min(folds, len(features)), seed, subjects):
        fold = LedoitWolf().fit(features[train])
        fold_head = OodHead(fold.location_, fold.precision_, 0.0)
        distances += [fold_head.distance(row) for row in features[held_out]]
    head.threshold = float(np.percentile(distances, percentile))
    return head
