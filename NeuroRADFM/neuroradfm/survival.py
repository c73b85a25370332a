"""Overall survival on frozen embeddings: a penalised Cox model (lifelines) on a few principal
components, collapsed back to one linear risk score on the standardised embedding.

Why PCA first: cohorts have tens to hundreds of patients and embeddings hundreds to thousands
of dimensions; a handful of components keeps the Cox fit stable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index
from sklearn.decomposition import PCA

from neuroradfm.folds import GROUP_COLUMN, case_folds, repeated
from neuroradfm.models.heads import CoxHead


def _fit_linear_cox(features: np.ndarray, days: np.ndarray, events: np.ndarray, components: int,
                    penalizer: float) -> tuple[np.ndarray, float, CoxPHFitter]:
    pca = PCA(n_components=components, random_state=0).fit(features)
    scores = pca.transform(features)
    columns = [f"pc{i}" for i in range(components)]
    frame = pd.DataFrame(scores, columns=columns).assign(days=days, event=events)
    fitter = CoxPHFitter(penalizer=penalizer).fit(frame, duration_col="days", event_col="event")
    coef = pca.components_.T @ fitter.params_[columns].to_numpy()
    log_hazard = fitter.predict_log_partial_hazard(frame[columns]).to_numpy()
    offset = float(np.mean(features @ coef - log_hazard))
    return coef, offset, fitter


MIN_CASES = 10
"""Cases with a known survival (days and event) a Cox head needs at the least."""
MIN_EVENTS = 2


def survival_problem(days: np.ndarray, events: np.ndarray, subjects: Sequence[str] | None = None) -> str | None:
    """Why no Cox head can be fitted on this survival (NaN: unknown), or None when one can: a check that needs no
    embeddings, so a cohort can be judged from its manifest before any case is preprocessed. With repeated
    ``subjects`` the cross-validation is grouped by subject and needs two of them."""
    days = np.asarray(days, dtype=np.float64)
    events = np.asarray(events, dtype=np.float64)
    known = ~(np.isnan(days) | np.isnan(events))
    cases, observed = int(known.sum()), int(events[known].astype(int).sum())
    if observed < MIN_EVENTS or cases < MIN_CASES:
        return (f"survival: need at least {MIN_CASES} cases and {MIN_EVENTS} events, got {cases} cases and "
                f"{observed} events")
    known_subjects = None if subjects is None else np.asarray(subjects)[known]
    if repeated(known_subjects) and len(set(known_subjects.tolist())) < 2:
        return f"survival: cross-validation grouped by {GROUP_COLUMN} needs at least 2 subjects, got 1"
    return None


def fit_cox(features: np.ndarray, days: np.ndarray, events: np.ndarray, *, components: int = 8,
            penalizer: float = 0.1, folds: int = 5, seed: int = 0, subjects: Sequence[str] | None = None) -> CoxHead:
    """Cox head with training and cross-validated c-index and the log-rank test at the median split.

    ``subjects`` (one per row): when a subject has several cases the cross-validation keeps them in one fold
    (``folds.case_folds``), else a follow-up scan's twin in training inflates ``cv_c_index``; the metrics then add
    ``n_subjects``.
    """
    problem = survival_problem(days, events, subjects)
    if problem:
        raise ValueError(problem)
    days = np.asarray(days, dtype=np.float64)
    events = np.asarray(events, dtype=np.float64)
    known = ~(np.isnan(days) | np.isnan(events))
    x, t, e = features[known], days[known], events[known].astype(int)
    groups = None if subjects is None else np.asarray(subjects)[known]
    components = int(min(components, len(t) // 5, x.shape[1]))
    coef, offset, fitter = _fit_linear_cox(x, t, e, components, penalizer)
    risk = x @ coef - offset

    cv_risk = np.empty_like(t)
    for train, test in case_folds(len(t), folds, seed, groups):
        fold_coef, fold_offset, _ = _fit_linear_cox(x[train], t[train], e[train], components, penalizer)
        cv_risk[test] = x[test] @ fold_coef - fold_offset
    median = float(np.median(risk))
    high = risk > median
    logrank = logrank_test(t[high], t[~high], e[high], e[~high])
    baseline = fitter.baseline_survival_
    return CoxHead(coef=coef, offset=offset, baseline_times=baseline.index.to_numpy(np.float64),
                   baseline_survival=baseline.iloc[:, 0].to_numpy(np.float64), median_risk=median,
                   metrics={"c_index": float(concordance_index(t, -risk, e)),
                            "cv_c_index": float(concordance_index(t, -cv_risk, e)),
                            "logrank_p_median_split": float(logrank.p_value),
                            "n": int(len(t)), "events": int(e.sum()), "pca_components": components,
                            **({"n_subjects": len(set(groups.tolist()))} if repeated(groups) else {})})
