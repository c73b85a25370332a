"""Marker AUCs when a case has fewer sequences: what the shipped bundle does with a short protocol.

The shipped heads are fitted on all-four embeddings, so each outer fold standardises and fits the project's probe
(``probes.fit_marker_probe``) on the training rows of the all-four embeddings only, then scores the held-out rows of
each subset's embeddings (the same cases, the other channels zeroed). The out-of-fold probabilities are pooled over
the folds and scored with scikit-learn's AUC, one number per subset and marker, so subsets differ only in their input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from neuroradfm.markers import MARKER_KEYS
from neuroradfm.probes import MIN_PER_CLASS, fit_marker_probe, fit_scaling, marker_problem
from neuroradfm.subsets import ALL_FOUR, EVALUATED_SUBSETS, canonical, label

Subset = tuple[str, ...]

SUBSET_MODES = ("auto", "none", "all")
"""``evaluate --subsets``: auto, the EVALUATED_SUBSETS the bundle was trained for; none; all, every one of them
(a bundle trained without sequence dropout too: how it degrades)."""

METHOD = ("marker probes fitted on the all-four embeddings of each outer training fold (as the shipped heads), "
          "applied to the held-out cases with only the subset's channels (the others zero, as preprocessing leaves "
          "a missing sequence); pooled out-of-fold AUC")


def subset_aucs(full: np.ndarray, by_subset: dict[tuple[str, ...], np.ndarray], labels: np.ndarray,
                splits: list[tuple[np.ndarray, np.ndarray]], seed: int = 0,
                c: dict[str, float] | None = None, *, subjects: Sequence[str] | None = None,
                marker_keys: Sequence[str] = MARKER_KEYS) -> dict[tuple[str, ...], dict[str, float | None]]:
    """``{subset: {marker: pooled out-of-fold AUC or None}}`` for every subset of ``by_subset`` plus the all-four
    row (scored on ``full`` unless ``by_subset`` gives its own all-four embeddings).

    ``labels`` (N, len(marker_keys)) 0/1/NaN; ``splits`` the outer (train rows, held-out rows); ``c[marker]`` fixes a
    marker's penalty (skips the inner search, to save time); ``subjects`` keeps a subject's scans in one inner fold,
    as ``evaluate`` does. None means the marker cannot be evaluated: no fold had a fittable training set (too few
    labels of a class) or the pooled held-out labels have fewer than MIN_PER_CLASS of a class.
    """
    full = np.asarray(full, np.float64)
    labels = np.asarray(labels, np.float64).reshape(len(full), -1)
    if labels.shape[1] != len(marker_keys):
        raise ValueError(f"labels have {labels.shape[1]} columns, expected {len(marker_keys)} "
                         f"({', '.join(marker_keys)})")
    embeddings = {canonical(s): np.asarray(e, np.float64) for s, e in by_subset.items()}
    embeddings.setdefault(ALL_FOUR, full)
    for subset, values in embeddings.items():
        if values.shape != full.shape:
            raise ValueError(f"embeddings of {subset} have shape {values.shape}, expected {full.shape}")
    subjects_array = None if subjects is None else np.asarray(subjects)
    fixed = c or {}
    results: dict[Subset, dict[str, float | None]] = {s: {} for s in embeddings}
    for column, key in enumerate(marker_keys):
        y = labels[:, column]
        prob = {s: np.full(len(full), np.nan) for s in embeddings}
        for train, held_out in splits:
            train, held_out = np.asarray(train, int), np.asarray(held_out, int)
            held_out = held_out[~np.isnan(y[held_out])]
            train_subjects = None if subjects_array is None else subjects_array[train]
            if len(held_out) == 0 or marker_problem(y[train], key, train_subjects):
                continue
            mean, scale = fit_scaling(full[train])
            try:
                head = fit_marker_probe((full[train] - mean) / scale, y[train], key, c=fixed.get(key), seed=seed,
                                        subjects=train_subjects)
            except ValueError:  # too few of a class for the inner folds: the fold is left out, as in evaluate
                continue
            for subset, values in embeddings.items():
                prob[subset][held_out] = expit((values[held_out] - mean) / scale @ head.coef + head.intercept)
        for subset in embeddings:
            results[subset][key] = _pooled_auc(y, prob[subset])
    return results


def _pooled_auc(y: np.ndarray, prob: np.ndarray) -> float | None:
    """AUC of the tested cases (probability not NaN), None with fewer than MIN_PER_CLASS of either class."""
    tested = ~np.isnan(prob)
    counts = np.bincount(y[tested].astype(int), minlength=2)
    if counts.min() < MIN_PER_CLASS:
        return None
    return float(roc_auc_score(y[tested].astype(int), prob[tested]))


def mean_auc(row: dict[str, float | None]) -> float | None:
    """Mean of a subset's marker AUCs that could be evaluated; None when none could."""
    values = [v for v in row.values() if v is not None]
    return float(np.mean(values)) if values else None


def chosen_subsets(mode: str, trained_for: Sequence[Subset]) -> list[Subset]:
    """The EVALUATED_SUBSETS a ``--subsets`` mode evaluates for a bundle trained for ``trained_for``."""
    if mode == "none":
        return []
    trained = {canonical(s) for s in trained_for}
    return [s for s in EVALUATED_SUBSETS if mode == "all" or s in trained]


def restrict_folds(splits: list[tuple[np.ndarray, np.ndarray]], rows: np.ndarray) -> list[tuple[np.ndarray,
                                                                                                np.ndarray]]:
    """The outer folds on ``rows`` only, renumbered 0 .. len(rows) - 1 (each fold keeps its cases that are kept)."""
    indices = [np.asarray(rows, int), *(np.asarray(part, int) for fold in splits for part in fold)]
    position = np.full(max((int(i.max()) + 1 for i in indices if len(i)), default=0), -1)
    position[rows] = np.arange(len(rows))
    out = []
    for train, held_out in splits:
        train, held_out = position[np.asarray(train, int)], position[np.asarray(held_out, int)]
        out.append((train[train >= 0], held_out[held_out >= 0]))
    return out


def subset_section(full: np.ndarray, by_subset: dict[Subset, np.ndarray], complete: np.ndarray,
                   labels: dict[str, np.ndarray], splits: list[tuple[np.ndarray, np.ndarray]], *, mode: str,
                   trained_for: Sequence[Subset], subjects: Sequence[str], seed: int = 0) -> dict:
    """The metrics.json block ``sequence_subsets`` of one bundle: ``subset_aucs`` on the cases with all four
    sequences (``complete``; the others are left out and counted), the all-four row first, each row with its
    difference to it. Its ``method``, ``cases`` and ``subsets`` (``sequences``, ``mean_auc``, ``auc``) are the card's
    ``subset_reliability`` fields."""
    rows = np.flatnonzero(complete)
    left_out = int(len(complete) - len(rows))
    base = {"mode": mode, "trained_for": [list(s) for s in trained_for], "method": METHOD, "cases": int(len(rows)),
            "left_out": left_out,
            "left_out_reason": "cases lacking a sequence are left out: they cannot be shown with all four, the "
                               "reference every row is compared with" if left_out else None}
    if not labels:
        return {"status": "not evaluable", "reason": "no marker column with 0/1 labels", **base}
    if len(rows) < 2:
        return {"status": "not evaluable", "reason": f"{len(rows)} case(s) have all four sequences", **base}
    keys = list(labels)
    matrix = np.column_stack([np.asarray(labels[k], np.float64) for k in keys])[rows]
    aucs = subset_aucs(full[rows], {s: e[rows] for s, e in by_subset.items()}, matrix, restrict_folds(splits, rows),
                       seed, subjects=[subjects[i] for i in rows], marker_keys=keys)
    reference = aucs[ALL_FOUR]
    trained = {canonical(s) for s in trained_for}
    table = []
    for subset in sorted(aucs, key=lambda s: EVALUATED_SUBSETS.index(s) if s in EVALUATED_SUBSETS else 99):
        row = aucs[subset]
        delta = {k: None if row[k] is None or reference[k] is None else row[k] - reference[k] for k in keys}
        table.append({"sequences": list(subset), "label": label(subset), "trained": subset in trained,
                      "auc": row, "mean_auc": mean_auc(row), "delta_auc": delta, "mean_delta_auc": mean_auc(delta)})
    return {"status": "ok", **base, "markers": keys, "subsets": table}
