"""Outer splits of an evaluation: which cases each fold's probes are fitted on and which they are tested on.

Every split keeps a subject's scans together (a follow-up scan of a training patient in the test fold would leak
the patient), and every bundle of one evaluation is tested on the same folds, so that they can be compared case by
case. Kinds:

- ``kfold``: scikit-learn's StratifiedGroupKFold, stratified by site (every fold sees every site in proportion),
  grouped by subject, shuffled with the recorded seed.
- ``site``: leave one site out (LeaveOneGroupOut): train on the other sites, test on the held-out one: the
  paper's external-cohort protocol.
- ``column``: a manifest column names each case's fold: ``train`` / ``test`` (one split), or fold numbers or names
  (each value is the test fold once, the other values train).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold

from neuroradfm.errors import InputError, SettingsError
from neuroradfm.evaluate.data import EvalData, Folds

SPLIT_KINDS = ("kfold", "site", "column")


@dataclass
class Split:
    kind: str
    folds: Folds
    description: str
    seed: int
    column: str | None = None
    test_names: list[str] = field(default_factory=list)
    """What each fold's test set is: a site name (``site``), a column value (``column``), else "fold k"."""

    def summary(self, data: EvalData) -> dict[str, Any]:
        """The split as the report states it."""
        return {"kind": self.kind, "description": self.description, "folds": len(self.folds), "seed": self.seed,
                "column": self.column, "group_column": "subject_id" if data.subjects != data.case_ids else None,
                "fold_sizes": [[len(train), len(test)] for train, test in self.folds], "test_names": self.test_names}


def _subjects_within(data: EvalData, groups: list[str], what: str) -> None:
    """A subject whose scans fall into two groups (two sites, two fold labels) would leak between train and test."""
    seen: dict[str, set[str]] = {}
    for subject, group in zip(data.subjects, groups):
        seen.setdefault(subject, set()).add(group)
    split = {subject: sorted(found) for subject, found in seen.items() if len(found) > 1}
    if split:
        listed = "; ".join(f"{s}: {', '.join(g)}" for s, g in list(split.items())[:5])
        raise InputError(None, f"subject(s) whose scans lie in different {what}s, so a split by {what} would put one "
                               f"patient in training and test: {listed}")


def kfold_split(data: EvalData, folds: int, seed: int) -> Split:
    subjects = len(set(data.subjects))
    if folds < 2:
        raise SettingsError("--folds", f"need at least 2 folds, got {folds}")
    if subjects < folds:
        raise InputError(None, f"{folds}-fold cross-validation needs at least {folds} subjects, the cohort has "
                               f"{subjects}: lower --folds")
    # A subject's site is the site of its first scan; the stratification only balances, it guarantees nothing.
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with np.errstate(all="ignore"):
        pairs = [(np.sort(train), np.sort(test)) for train, test in
                 splitter.split(np.zeros(len(data)), data.sites, groups=data.subjects)]
    grouped = ", grouped by subject_id" if data.subjects != data.case_ids else ""
    return Split("kfold", pairs, f"{folds}-fold cross-validation stratified by site{grouped}, seed {seed}", seed,
                 test_names=[f"fold {i + 1}" for i in range(len(pairs))])


def site_split(data: EvalData, seed: int) -> Split:
    sites = sorted(set(data.sites))
    if len(sites) < 2:
        raise InputError(None, f"leave-one-site-out needs at least 2 sites, the cohort has {len(sites)} "
                               f"({', '.join(sites)})")
    _subjects_within(data, data.sites, "site")
    pairs, names = [], []
    for train, test in LeaveOneGroupOut().split(np.zeros(len(data)), groups=data.sites):
        pairs.append((np.sort(train), np.sort(test)))
        names.append(data.sites[test[0]])
    return Split("site", pairs, f"leave one site out ({len(sites)} folds: train on the other sites, test on the "
                                f"held-out one)", seed, test_names=names)


def column_split(data: EvalData, values: list[Any], column: str, seed: int) -> Split:
    """Folds from a manifest column; ``values`` holds the column's cell of every case (None when empty)."""
    empty = [case for case, value in zip(data.case_ids, values) if value is None or str(value).strip() == ""]
    if empty:
        raise InputError(None, f"split column {column!r} is empty for {len(empty)} case(s): {', '.join(empty[:5])}")
    labels = [str(value).strip() for value in values]
    _subjects_within(data, labels, f"value of {column!r}")
    kinds = {label.lower() for label in labels}
    if kinds <= {"train", "test"}:
        if kinds != {"train", "test"}:
            raise InputError(None, f"split column {column!r} holds only {', '.join(sorted(kinds))}: it needs both "
                                   "train and test cases")
        test = np.array([i for i, label in enumerate(labels) if label.lower() == "test"])
        train = np.array([i for i, label in enumerate(labels) if label.lower() == "train"])
        return Split("column", [(train, test)], f"the manifest's {column!r} column: {len(train)} train, {len(test)} "
                                                "test cases", seed, column, ["test"])
    counts = Counter(labels)
    if len(counts) < 2:
        raise InputError(None, f"split column {column!r} holds one value only ({labels[0]!r}): give train/test or "
                               "fold numbers")
    names = sorted(counts, key=lambda v: (len(v), v))
    pairs = [(np.array([i for i, label in enumerate(labels) if label != name]),
              np.array([i for i, label in enumerate(labels) if label == name])) for name in names]
    return Split("column", pairs, f"the manifest's {column!r} column: {len(names)} folds ({', '.join(names)})", seed,
                 column, names)


def make_split(data: EvalData, kind: str, *, folds: int = 5, seed: int = 0, column: str | None = None,
               column_values: list[Any] | None = None) -> Split:
    if kind == "kfold":
        return kfold_split(data, folds, seed)
    if kind == "site":
        return site_split(data, seed)
    if kind == "column":
        if column is None or column_values is None:
            raise SettingsError("--split-column", "a column split needs --split-column NAME (a manifest column)")
        return column_split(data, column_values, column, seed)
    raise SettingsError("--split", f"unknown split {kind!r}; choose one of {', '.join(SPLIT_KINDS)}")
