"""Inner cross-validation folds of the heads (probes, Cox, OOD threshold, site classifier), grouped by subject.

A patient scanned at several timepoints gives near-identical rows: with one scan in the training part of a fold and
another in its held-out part, the cross-validated AUC, c-index or OOD threshold is optimistic and the penalty chosen on
it overfits. So when some subject has more than one case the folds are scikit-learn's StratifiedGroupKFold (labels)
or GroupKFold (survival, OOD), with the same seed; without subjects, or with one case per subject, they are exactly
the StratifiedKFold / KFold folds of before, so results do not change.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

Splits = list[tuple[np.ndarray, np.ndarray]]
"""(training rows, held-out rows) of each fold, what scikit-learn's ``cv=`` accepts."""

GROUP_COLUMN = "subject_id"
"""The manifest column the grouped folds follow, as the records name it."""


def repeated(subjects: Sequence[str] | None) -> bool:
    """True when some subject has more than one case: only then do the folds need grouping."""
    return subjects is not None and len(set(subjects)) < len(subjects)


def class_folds(labels: Sequence, folds: int, seed: int, subjects: Sequence[str] | None = None) -> Splits:
    """Stratified folds of ``labels`` in which every held-out fold holds every class.

    Without repeated subjects: StratifiedKFold with min(folds, smallest class) splits. With them: StratifiedGroupKFold
    with at most min(folds, subjects of the rarest class) splits, fewer when a split would leave a held-out fold
    without a class (StratifiedGroupKFold balances, it does not guarantee); a ValueError when not even 2 folds do.
    """
    labels = np.asarray(labels)
    x = np.zeros(len(labels))
    if not repeated(subjects):
        _, counts = np.unique(labels, return_counts=True)
        return list(StratifiedKFold(n_splits=min(folds, int(counts.min())), shuffle=True,
                                    random_state=seed).split(x, labels))
    groups = np.asarray(subjects)
    classes = np.unique(labels)
    per_class = {str(c): len(set(groups[labels == c].tolist())) for c in classes}
    for n_splits in range(min(folds, *per_class.values()), 1, -1):
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with np.errstate(all="ignore"):
            splits = list(splitter.split(x, labels, groups))
        if all(len(np.unique(labels[test])) == len(classes) for _, test in splits):
            return splits
    counts = ", ".join(f"{c}: {n}" for c, n in per_class.items())
    raise ValueError(f"cross-validation grouped by {GROUP_COLUMN} needs at least 2 folds that each hold out every "
                     f"class; subjects per class: {counts}")


def case_folds(n: int, folds: int, seed: int, subjects: Sequence[str] | None = None) -> Splits:
    """Unstratified folds of ``n`` cases: KFold with ``folds`` splits without repeated subjects, else GroupKFold with
    min(folds, subjects) splits (a ValueError under 2)."""
    x = np.zeros(n)
    if not repeated(subjects):
        return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(x))
    count = len(set(subjects))
    if min(folds, count) < 2:
        raise ValueError(f"cross-validation grouped by {GROUP_COLUMN} needs at least 2 subjects, got {count}")
    return list(GroupKFold(n_splits=min(folds, count), shuffle=True, random_state=seed).split(x, groups=subjects))
